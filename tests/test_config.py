"""Configuration: the seed's XML loads, and every broken variant is one line naming file and key, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgmedic.demo.sandbox import owner
from pgmedic.durations import parse_duration
from tests.harness import pgmedic

SEED_XML = """<?xml version="1.0" encoding="UTF-8"?>
<POSTGRESConfig>
  <!--NOTE: PLEASE UNCOMMENT THE REQUIRED ATTRS AND SET APPROPRIATE VALUES.-->
  <POSTGRESinstance id="postgres">
    <data_directory>/var/lib/pgsql/data</data_directory>
  </POSTGRESinstance>
  <!--POSTGRESinstance id="instOwner"-->
    <!--data_directory>/var/lib/pgsql/data</data_directory-->
  <!--/POSTGRESinstance-->
</POSTGRESConfig>
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def instance_yaml(extra: str = "", configfile: str = "", name: str = "postgresqlapp") -> str:
    return (
        f"instances:\n  {name}:\n    type: POSTGRES\n    instancename: {owner()}\n    database: testdb\n"
        + (f"    configfile: {configfile}\n" if configfile else "")
        + extra
    )


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    return write(tmp_path / "POSTGRESconfig.xml", SEED_XML.replace('id="postgres"', f'id="{owner()}"'))


def test_seed_sample_loads(tmp_path: Path, seed: Path) -> None:
    cfg = write(tmp_path / "pgmedic.yaml", instance_yaml(configfile=str(seed)))
    result = pgmedic(None, "check-config", config=cfg)
    assert result.returncode == 0, result.stderr
    assert "1 instance(s): postgresqlapp" in result.stdout
    shown = pgmedic(None, "query", "app", "postgresqlapp", "--json", config=cfg)
    assert '"data_directory": "/var/lib/pgsql/data"' in shown.stdout
    assert '"state": "no_data_directory"' in shown.stdout


def test_exact_seed_text_parses() -> None:
    """The XML exactly as the seed prints it (owner postgres) gives its data directory."""
    import tempfile

    from pgmedic.ksysxml import data_directory_from_xml

    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(SEED_XML)
        f.flush()
        assert data_directory_from_xml(f.name, "postgres") == "/var/lib/pgsql/data"


def _script(tmp_path: Path, mode: int) -> Path:
    return write(tmp_path / "start.sh", "#!/bin/sh\nexit 0\n", mode)


BROKEN = {
    "missing configfile": (
        lambda t, s: instance_yaml(configfile=str(t / "nope.xml")),
        "nope.xml: configfile: file does not exist",
    ),
    "configfile is a directory": (lambda t, s: instance_yaml(configfile=str(t)), "is a directory"),
    "malformed XML": (
        lambda t, s: instance_yaml(configfile=str(write(t / "bad.xml", "<POSTGRESConfig><POSTGRESinstance>"))),
        "malformed XML",
    ),
    "no instance with that id": (
        lambda t, s: instance_yaml(configfile=str(write(t / "other.xml", SEED_XML.replace('id="postgres"', 'id="x"')))),
        "no such instance (instancename); ids in file: 'x'",
    ),
    "empty data_directory": (
        lambda t, s: instance_yaml(
            configfile=str(
                write(
                    t / "empty.xml",
                    SEED_XML.replace("/var/lib/pgsql/data<", "<").replace('id="postgres"', f'id="{owner()}"'),
                )
            )
        ),
        "<data_directory>: is empty",
    ),
    "unknown key": (
        lambda t, s: instance_yaml("    colour: blue\n", str(s)),
        "instances.postgresqlapp.colour: unknown key",
    ),
    "wrong type": (
        lambda t, s: instance_yaml("    port: many\n", str(s)),
        "instances.postgresqlapp.port: expected a whole number",
    ),
    "relative script": (lambda t, s: instance_yaml("    start_script: start.sh\n", str(s)), "must be an absolute path"),
    "non-executable script": (
        lambda t, s: instance_yaml(f"    start_script: {_script(t, 0o644)}\n", str(s)),
        "is not executable",
    ),
    "unknown owner": (
        lambda t, s: instance_yaml(configfile=str(s)).replace(f"instancename: {owner()}", "instancename: nosuchuser42"),
        "instancename: no OS user named 'nosuchuser42'",
    ),
    "both configfile and data_directory": (
        lambda t, s: instance_yaml("    data_directory: /srv/pg\n", str(s)),
        "set exactly one of configfile or data_directory",
    ),
    "wrong instance type": (
        lambda t, s: instance_yaml("", str(s)).replace("type: POSTGRES", "type: ORACLE"),
        "type: must be POSTGRES",
    ),
    "duplicate name in one file": (
        lambda t, s: instance_yaml("", str(s)) + instance_yaml("", str(s)).replace("instances:\n", ""),
        "duplicate key 'postgresqlapp'",
    ),
    "malformed YAML": (lambda t, s: "instances: [\n", "malformed YAML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_is_one_line_exit_2(tmp_path: Path, seed: Path, case: str) -> None:
    make, expected = BROKEN[case]
    cfg = write(tmp_path / "pgmedic.yaml", make(tmp_path, seed))
    result = pgmedic(None, "check-config", config=cfg)
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
    assert lines[0].startswith("pgmedic: /"), "the message names the file"


def test_duplicate_across_instances_d(tmp_path: Path, seed: Path) -> None:
    cfg = write(tmp_path / "pgmedic.yaml", instance_yaml(configfile=str(seed)))
    (tmp_path / "instances.d").mkdir()
    write(
        tmp_path / "instances.d" / "postgresqlapp.yaml", f"instancename: {owner()}\ndatabase: x\nconfigfile: {seed}\n"
    )
    result = pgmedic(None, "check-config", config=cfg)
    assert result.returncode == 2
    assert "duplicate instance name, also defined in" in result.stderr


def test_missing_main_file_named_explicitly(tmp_path: Path) -> None:
    result = pgmedic(None, "check-config", config=tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml: file does not exist" in result.stderr


def test_pgmedic_config_env_is_used(tmp_path: Path, seed: Path) -> None:
    import subprocess
    import sys

    cfg = write(tmp_path / "env.yaml", instance_yaml(configfile=str(seed), name="fromenv"))
    env = {**os.environ, "PGMEDIC_CONFIG": str(cfg), "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = subprocess.run([sys.executable, "-m", "pgmedic", "check-config"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "fromenv" in out.stdout, out.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h30m", 5400), ("500ms", 0.5), (7, 7), ("2", 2)]
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "10x", "-1", True, "5m trailing"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_remediator_section_is_checked(tmp_path: Path, seed: Path) -> None:
    cfg = write(tmp_path / "pgmedic.yaml", "remediator:\n  actions:\n    PostgresPostmasterDown: stop\n")
    result = pgmedic(None, "check-config", config=cfg)
    assert result.returncode == 2
    assert (
        "remediator.actions: action for 'PostgresPostmasterDown' must be one of restart, start, none" in result.stderr
    )
    cfg = write(tmp_path / "pgmedic.yaml", "remediator:\n  listen: 0.0.0.0\n")
    assert "remediator.listen: expected HOST:PORT" in pgmedic(None, "check-config", config=cfg).stderr
    cfg = write(tmp_path / "pgmedic.yaml", "ksys:\n  webhook: ftp://x\n")
    assert "ksys.webhook: expected an http:// or https:// URL" in pgmedic(None, "check-config", config=cfg).stderr


@pytest.mark.parametrize("kind", ["exporter", "remediator"])
def test_bad_listen_on_the_command_line_is_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    cfg = write(tmp_path / "pgmedic.yaml", "instances: {}\n")
    result = pgmedic(None, kind, "--listen", "localhost", config=cfg, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "pgmedic: --listen: expected HOST:PORT, got 'localhost'"
