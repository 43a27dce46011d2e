"""`make` with no target is the newcomer's map: it lists every target, each with one line. The targets that use
the local MLflow give their command its accounts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(".PHONY:")]
    return set(line.removeprefix(".PHONY:").split()) - {"help"}


def test_make_with_no_target_lists_every_target_with_what_it_does() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed = re.findall(r"^  make (\S+)\s+(\S.*)$", shown.stdout, flags=re.MULTILINE)
    names = [name for name, _ in listed]
    assert sorted(names) == sorted(phony_targets()), "each target once, and only targets"
    assert all(len(what) > 10 for _, what in listed)


#: The targets that talk to the local MLflow (basic-auth app): the command each runs, and the accounts of
#: .local/mlflow/credentials.json that `standins.mlflow_server exec` hands it in its environment.
MLFLOW_CLIENTS = {
    "demo": ("-m scripts.demo", "--user reader --airflow-connection"),
    "airflow-ui": ("/bin/airflow standalone", "--airflow-connection"),
    "serve": ("-m scripts.serve", "--user reader"),
}


@pytest.mark.parametrize("target", sorted(MLFLOW_CLIENTS))
def test_the_targets_that_use_the_local_mlflow_run_their_command_with_its_accounts(target: str) -> None:
    command, accounts = MLFLOW_CLIENTS[target]
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    (line,) = [" ".join(line.split()) for line in shown.splitlines() if command in line]
    wrapper = f"-m standins.mlflow_server exec --root {ROOT}/.local/mlflow --port 5000 {accounts} -- "
    assert wrapper in line and line.index(wrapper) < line.index(command), line
