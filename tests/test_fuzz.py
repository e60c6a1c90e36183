"""Schemathesis against the remediator's own OpenAPI document, over real HTTP: every operation, a
bounded number of generated requests (valid and invalid), all checks. The document must say exactly
what the server accepts (no schema-violating request accepted, no valid one refused) and no request
may get a 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgmedic.demo.sandbox import pgmedic_service, write_secret
from tests.harness import TOKEN

MAX_EXAMPLES = os.environ.get("PGMEDIC_FUZZ_EXAMPLES", "150")
SEED = os.environ.get("PGMEDIC_FUZZ_SEED", "20261128")  # fixed for CI; set another to explore


def test_schemathesis_finds_no_server_error_and_no_spec_violation(tmp_path: Path, services: list) -> None:
    st = shutil.which("st", path=os.path.dirname(sys.executable))
    assert st, "schemathesis is missing: pip install -e '.[test]' (make test does it)"
    token = write_secret(tmp_path / "token", TOKEN)
    config = tmp_path / "pgmedic.yaml"
    config.write_text(
        f"remediator:\n  state_dir: {tmp_path / 'state'}\n  token_file: {token}\ninstances:\n  main:\n"
        f"    type: POSTGRES\n    instancename: postgres\n    database: postgres\n"
        f"    data_directory: {tmp_path / 'no-such-cluster'}\n"
    )
    remediator = pgmedic_service("remediator", config, tmp_path)
    services.append(remediator)
    argv = [st, "run", f"{remediator.url}/api/v1/openapi.json", "--checks", "all", "--max-examples", MAX_EXAMPLES,
            "--seed", SEED, "-H", f"Authorization: Bearer {TOKEN}", "--no-color"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in remediator.log(), remediator.log()
