"""Schemathesis over the OpenAPI schema against `sdedit up` (real HTTP): every operation, with and
without a key: no 5xx, status codes, content types and bodies as documented, errors as JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KEY = "fuzz-key"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,errors_are_json_naming_their_status")
EXAMPLES = int(os.environ.get("SDEDIT_FUZZ_EXAMPLES", "25"))  # the full run: 500


@pytest.mark.parametrize("running_service", [{"SDEDIT_API_KEYS": f'["{KEY}"]'}], indirect=True)
@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_failure(running_service, with_key, tmp_path):
    url, _ = running_service
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
               "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--workers", "1",
               "--phases", "examples,coverage,fuzzing", "--seed", "1", "--request-timeout", "30",
               "--report", "junit", "--report-dir", str(tmp_path)]
    if with_key:
        command += ["--header", f"Authorization: Bearer {KEY}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout  # it really ran test cases
