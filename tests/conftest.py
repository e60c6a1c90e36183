"""Shared fixtures: real clusters, always torn down (also when a test killed or froze the server)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgmedic.demo.sandbox import Cluster, make_temp_dir, make_template, make_trusted_dir, new_cluster

SLOW_FIXTURES = {"pg_template", "make_cluster", "cluster", "services", "trusted_dir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Layers by what a test uses: e2e (tests/e2e: Prometheus, Alertmanager), cluster (initdb or started
    processes), the rest fast. `make test-fast` runs `-m "not cluster and not e2e"`."""
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
        elif SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    base = make_temp_dir("pgmedic-template-")
    try:
        yield make_template(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
def trusted_dir() -> Iterator[Path]:
    """A directory whose ancestors nobody but root can write: scripts placed here pass pgmedic's trust rule."""
    path = make_trusted_dir("pgmedic-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
