"""The files pgmedic ships for the rest of the chain: rules, routing, Prometheus example and flags,
promtool tests, runbooks and Grafana dashboards.

They live at the top of the source tree (alerts/, grafana/, docs/); the symlinks beside this file make
them package data of ``pgmedic.assets``, so a ``pip install .`` has them too: the demo reads them from
here, and ``pgmedic assets DIR`` writes them out for a user's Prometheus, Alertmanager and Grafana.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path

from ..errors import PgmedicError

# What `pgmedic assets` writes: folder here -> folder in DIR.
ASSET_FOLDERS = {
    "alerts": "alerts",
    "dashboards": "grafana/dashboards",
    "provisioning": "grafana/provisioning",
    "docs": "docs",
}


def asset_path(folder: str) -> Path:
    """The installed folder of one kind of asset (wheels and editable installs keep real files)."""
    with as_file(files(__name__) / folder) as path:
        return Path(path)


def alerts_dir() -> Path:
    return asset_path("alerts")


def _walk(node: Traversable, prefix: Path) -> list[tuple[Traversable, Path]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name.startswith(("_", ".")) or child.name.endswith((".py", ".pyc")):
            continue
        if child.is_dir():
            out += _walk(child, prefix / child.name)
        else:
            out.append((child, prefix / child.name))
    return out


def write_assets(target: Path, *, force: bool = False) -> list[Path]:
    """Copy every shipped asset under TARGET; refuses to overwrite a file unless FORCE. Returns the files."""
    root = files(__name__)
    plan = [
        (src, target / rel) for here, there in ASSET_FOLDERS.items() for src, rel in _walk(root / here, Path(there))
    ]
    existing = [dest for _, dest in plan if dest.exists()]
    if existing and not force:
        raise PgmedicError(f"{existing[0]} exists ({len(existing)} file(s) would be overwritten): use --force")
    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with as_file(src) as path:
            shutil.copyfile(path, dest)
    return [dest for _, dest in plan]
