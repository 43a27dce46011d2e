"""The stage contract: JSON arguments from other stages, results for the XCom sidecar, exit codes."""

from __future__ import annotations

import re
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


STAGES = ["prepare", "train", "evaluate", "register", "promote", "synthetic", "serve.export"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stages_help_shows_defaults_and_its_docstrings_examples(stage, capsys) -> None:
    import importlib

    module = importlib.import_module(f"ml.{stage}")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert f"python -m ml.{stage} " in shown.split("\n\n", 2)[-1]  # the example, after the options
    # Each example line kept as written, continuation backslashes included.
    assert all(line.rstrip().endswith("\\") for line in shown.splitlines() if line.rstrip().endswith(" \\"))
    if stage == "train":
        assert re.search(
            r"--distributed \{none,dask\}\s+dask: .*?\(default:\s+none\)", shown, flags=re.DOTALL
        )


def test_subcommands_are_described(capsys) -> None:
    from ml.release.__main__ import main as release
    from ml.tune import main as tune

    for main, commands in ((release, ("deploy", "rollback")), (tune, ("worker", "best"))):
        with pytest.raises(SystemExit):
            main(["--help"])
        shown = capsys.readouterr().out
        assert all(re.search(rf"^\s+{name}\s+\S", shown, flags=re.MULTILINE) for name in commands), shown


def test_a_stage_run_by_hand_writes_its_result_in_a_local_folder_and_says_where(
    tmp_path, monkeypatch, capsys
) -> None:
    """Outside a pod (no XCom folder named) the result goes under .local/results/ of the working folder, instead of
    failing on the sidecar's path after the work is done."""
    import json

    from contract import HAND_RUN_XCOM_DIR
    from ml.runtime import run_stage

    monkeypatch.delenv(XCOM_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ml.runtime.check_tracking_uri", lambda: None)
    run_stage(lambda argv: {"model_uri": "models:/m/1"}, [])  # logs to stdout, as into a task log
    written = tmp_path / HAND_RUN_XCOM_DIR / XCOM_RESULT_FILE
    assert json.loads(written.read_text()) == {"model_uri": "models:/m/1"}
    assert f"result written to {written}" in capsys.readouterr().out
