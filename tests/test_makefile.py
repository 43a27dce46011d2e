"""`make` with no target is the newcomer's map: it lists every target, each with one line. The targets that use
the local MLflow give their command its accounts. Installs are one line each unless they fail."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tomllib
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


#: What installs packages in a recipe: each such command runs through scripts/quietly.
INSTALLERS = re.compile(
    r"\b(pip install|uv sync|uv\) pip install|uv\) venv|npm install|npm pack|apt-get install)\b"
)


def logical_lines() -> list[str]:
    """The Makefile's lines (recipes and variables), each with its continuation lines joined."""
    return [line.strip() for line in (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines()]


def test_every_install_runs_quietly() -> None:
    """A fresh clone's first `make demo` or `make test` shows one line per install, not the installers' output."""
    installs = [line for line in logical_lines() if INSTALLERS.search(line) and not line.startswith("#")]
    assert len(installs) >= 8, installs
    assert [
        line for line in installs if not -1 < line.find("$(QUIETLY) ") < INSTALLERS.search(line).start()
    ] == []


def test_an_install_that_succeeds_is_one_line_and_one_that_fails_shows_all_its_output(tmp_path: Path) -> None:
    quietly = str(ROOT / "scripts" / "quietly")
    noisy = "for n in $(seq 300); do echo + package-$n==1.0; done; echo 'Installed 300 packages in 2s'"
    done = subprocess.run(
        [quietly, ".venv (uv.lock)", "--summary", "Installed [0-9]+ packages", "--", "bash", "-c", noisy],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert re.fullmatch(r"\.venv \(uv\.lock\): Installed 300 packages in [0-9]+ s\n", done.stdout), (
        done.stdout
    )
    assert done.stderr == ""
    failed = subprocess.run(
        [quietly, "checkov", "--", "bash", "-c", f"{noisy}; echo 'ERROR: no matching distribution' >&2; exit 7"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 7 and failed.stdout == ""
    lines = failed.stderr.splitlines()
    assert len(lines) == 303 and lines[0] == "+ package-1==1.0" and "ERROR: no matching distribution" in lines
    assert re.fullmatch(
        r"FAILED: checkov \(exit 7 after [0-9]+ s\); the installer's output is above", lines[-1]
    )


def pytest_markers_selected(*make_args: str) -> str | None:
    """The ``-m`` expression of the pytest command that ``make -n`` prints for ``make_args``; None without one.
    Not with the variables of a ``make`` this test runs under (CI's ``WITH_SCHEDULER=1`` reaches it in
    ``MAKEFLAGS`` and in the environment)."""
    made = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "WITH_SCHEDULER"}
    env = {name: value for name, value in os.environ.items() if name not in made}
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", *make_args], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    (command,) = [line for line in shown.splitlines() if "-m pytest" in line]
    found = re.search(r' -m "([^"]+)"', command)
    return found[1] if found else None


def test_ci_runs_every_test_once_in_one_session_and_the_two_targets_split_them() -> None:
    """.ci/run is `make test` with `make test-scheduler`'s tests (one pytest session), and between them the two
    targets select every test once, whatever its markers."""
    from _pytest.mark.expression import Expression

    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make")]
    assert ci == ["make test WITH_SCHEDULER=1"]
    assert pytest_markers_selected("test", "WITH_SCHEDULER=1") is None, "CI deselects nothing"
    test, scheduler = (
        Expression.compile(pytest_markers_selected(goal) or "") for goal in ("test", "test-scheduler")
    )
    declared = [line.split(":")[0] for line in pytest_config_markers()]
    assert {"scheduler", "drill", "long"} <= set(declared)
    for count in range(len(declared) + 1):
        for marks in itertools.combinations(declared, count):
            chosen = [
                target.evaluate(lambda name, marks=marks: name in marks) for target in (test, scheduler)
            ]
            assert sorted(chosen) == [False, True], f"a test marked {marks or 'nothing'}: {chosen}"


def pytest_config_markers() -> list[str]:
    """The markers pyproject.toml declares (``name: what it marks``)."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
