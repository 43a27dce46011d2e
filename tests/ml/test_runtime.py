"""The stage contract: JSON arguments from other stages, results for the XCom sidecar, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract import XCOM_DIR_ENV, XCOM_RESULT_FILE
from ml.errors import StageError
from ml.runtime import EXIT_INVALID_INPUT, json_object

ROOT = Path(__file__).resolve().parents[2]


def test_a_json_object_argument_is_parsed_and_anything_else_refused_by_flag() -> None:
    parse = json_object("--verdict", "the rollout watch's result")
    assert parse('{"phase": "Healthy"}') == {"phase": "Healthy"}
    with pytest.raises(StageError, match="--verdict is not valid JSON"):
        parse("{phase")
    with pytest.raises(StageError, match=r"--verdict must be a JSON object \(the rollout watch's result\)"):
        parse("[1]")


@pytest.mark.parametrize("stage", ["register", "promote"])
def test_a_stage_given_a_malformed_result_exits_2_with_one_error_line_and_writes_nothing(
    stage, tmp_path
) -> None:
    flags = {
        "register": ["--evaluation", "null", "--run-key", "k", "--alias", "challenger"],
        "promote": ["--verdict", "null", "--name", "m", "--version", "1", "--alias", "champion"],
    }[stage]
    done = subprocess.run(
        [sys.executable, "-m", f"ml.{stage}", *flags],
        cwd=ROOT, capture_output=True, text=True, env={XCOM_DIR_ENV: str(tmp_path), "PATH": ""},
    )  # fmt: skip
    assert done.returncode == EXIT_INVALID_INPUT, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1].startswith("ERROR: --")
        and "must be a JSON object" in done.stderr
    )
    assert not (tmp_path / XCOM_RESULT_FILE).exists()
