"""Shared fixtures: real clusters, always torn down (also when a test killed or froze the server)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgmedic.demo.pgversions import RELEASES
from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    chown_owner,
    make_temp_dir,
    make_template,
    make_trusted_dir,
    new_cluster,
    pgmedic_service,
    write_config,
)
from tests.harness import Rig
from tests.ksys_sink import KsysSink

SLOW_FIXTURES = {"pg_template", "make_cluster", "cluster", "services", "trusted_dir", "exporter_for"}
DEFAULT_MAJOR = 15  # the distribution's server: what a test runs on unless it is in the version matrix
# The version matrix: tests marked every_pg run once per major version listed here.
MATRIX = [int(v) for v in os.environ.get("PGMEDIC_TEST_PG", ",".join(map(str, RELEASES))).split(",") if v.strip()]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "every_pg: run once per PostgreSQL major version of the matrix")
    config.addinivalue_line("markers", "one_pg: in an every_pg module, run on the default version only")
    config.addinivalue_line("markers", "pg(*majors): run on these major versions (of the matrix)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize pg_major: the matrix for every_pg tests (unless one_pg), pg(…) for its versions."""
    if "pg_major" not in metafunc.fixturenames:
        return
    chosen = metafunc.definition.get_closest_marker("pg")
    if chosen is not None:
        majors = [m for m in chosen.args if m in MATRIX] or [DEFAULT_MAJOR]
    elif metafunc.definition.get_closest_marker("every_pg") and not metafunc.definition.get_closest_marker("one_pg"):
        majors = MATRIX
    else:
        return
    metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors], indirect=True, scope="function")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Layers by what a test uses: e2e (tests/e2e: Prometheus, Alertmanager), cluster (initdb or started
    processes), the rest fast. `make test-fast` runs `-m "not cluster and not e2e"`."""
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
        elif SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def pg_major(request: pytest.FixtureRequest) -> int:
    """The PostgreSQL major version this test runs on."""
    return int(getattr(request, "param", DEFAULT_MAJOR))


@pytest.fixture(scope="session")
def pg_templates() -> Iterator[Callable[[int], Path]]:
    """The initdb of a major version, made once per session when a test first asks for it."""
    base = make_temp_dir("pgmedic-template-")
    made: dict[int, Path] = {}

    def template_for(major: int) -> Path:
        if major not in made:
            directory = base / str(major)
            directory.mkdir(mode=0o755)
            chown_owner(directory)
            made[major] = make_template(directory, major)
        return made[major]

    try:
        yield template_for
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_template(pg_templates: Callable[[int], Path], pg_major: int) -> Path:
    return pg_templates(pg_major)


@pytest.fixture
def make_cluster(pg_template: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(name: str = "main", start: bool = True) -> Cluster:
        cluster = new_cluster(pg_template, name, start)
        made.append(cluster)
        return cluster

    try:
        yield factory
    finally:
        for cluster in made:
            cluster.destroy()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list]:
    """Collects started Services and stops them all at teardown, whatever happened."""
    started: list = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture
def exporter_for(tmp_path: Path, services: list) -> Callable[..., Service]:
    """Starts an exporter (a real process on loopback) watching the given clusters."""

    def start(*clusters: Cluster) -> Service:
        cfg = write_config(tmp_path / "pgmedic.yaml", list(clusters), tmp_path / "state")
        service = pgmedic_service("exporter", cfg, tmp_path)
        services.append(service)
        return service

    return start


@pytest.fixture
def trusted_dir() -> Iterator[Path]:
    """A directory whose ancestors nobody but root can write: scripts placed here pass pgmedic's trust rule."""
    path = make_trusted_dir("pgmedic-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ksys() -> Iterator[KsysSink]:
    sink = KsysSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def rig(cluster: Cluster, tmp_path: Path, services: list, ksys: KsysSink) -> Rig:
    r = Rig(cluster, tmp_path, services, ksys)
    r.configure()
    return r
