"""A user's install: `pip install .` into a fresh venv, then the demo and the assets from an empty directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with pgmedic installed from a copy of the tree (as `pip install .` from a clone)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip install . failed (needs PyPI access): {pip.stderr[-2000:]}"
    shutil.rmtree(source)  # the installed package must not need the tree it came from
    try:
        yield venv
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(venv: Path, *argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_one_import_root(installed: Path, tmp_path: Path) -> None:
    found = run(installed, "python", "-c", "import pgmedic.exporter.server, pgmedic.remediator.app", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    for name in ("exporter", "remediator"):
        stray = run(installed, "python", "-c", f"import {name}", cwd=tmp_path)
        assert stray.returncode != 0 and "No module named" in stray.stderr, f"{name} is installed at the top level"


def test_assets_are_written_and_accepted_by_promtool_and_amtool(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "assets"
    written = run(installed, "pgmedic", "assets", str(out), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert subprocess.run(["promtool", "check", "rules", str(out / "alerts/pgmedic.rules.yml")]).returncode == 0
    assert subprocess.run(["promtool", "test", "rules", str(out / "alerts/tests/pgmedic.test.yml")]).returncode == 0
    assert subprocess.run(["amtool", "check-config", str(out / "alerts/alertmanager.yml")]).returncode == 0
    assert (out / "grafana/dashboards/pgmedic-overview.json").stat().st_size > 1000
    assert (out / "docs/runbooks.md").exists()
    again = run(installed, "pgmedic", "assets", str(out), cwd=tmp_path)
    assert again.returncode == 1 and "use --force" in again.stderr, "existing files are not overwritten silently"


def test_demo_once_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    demo = run(installed, "pgmedic", "demo", "--once", cwd=empty)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "accepting connections" in demo.stdout
    assert not list(empty.iterdir()), "the demo leaves nothing behind"
