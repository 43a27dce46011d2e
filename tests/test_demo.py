"""The demo's terminal: Airflow's and the pods' lines go to the log file, a line per task to the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.demo import budget_left, quiet, tail


def test_airflow_and_its_subprocesses_write_to_the_log_file_and_the_terminal_keeps_the_progress(
    tmp_path: Path, capfd
) -> None:
    log_file = tmp_path / "demo.log"
    for run in (1, 2):  # the demo runs the DAG twice: the second run must find its streams open
        with quiet(log_file) as terminal:
            os.write(
                1, f"airflow: run {run}\n".encode()
            )  # what Airflow's loggers write to the process's stdout
            os.write(2, b"airflow: a warning\n")
            subprocess.run([sys.executable, "-c", "print('pod: a stage line')"], check=True)
            terminal.write(f"  12:00:0{run}  prepare              running\n")
    shown = capfd.readouterr()
    assert shown.out == "  12:00:01  prepare              running\n  12:00:02  prepare              running\n"
    assert shown.err == ""
    assert log_file.read_text().splitlines() == [
        "airflow: run 1", "airflow: a warning", "pod: a stage line",
        "airflow: run 2", "airflow: a warning", "pod: a stage line",
    ]  # fmt: skip
    os.write(1, b"after: the terminal again\n")
    assert capfd.readouterr().out == "after: the terminal again\n"


def test_a_failed_task_shows_the_end_of_the_log_and_where_the_rest_is(tmp_path: Path) -> None:
    log_file = tmp_path / "demo.log"
    log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    shown = tail(log_file, 3)
    assert shown == f"      | line 97\n      | line 98\n      | line 99\n      (the whole log: {log_file})\n"


def test_a_spent_error_budget_says_spent_and_how_many_times_over() -> None:
    """It printed "availability -20082% left"."""
    assert budget_left("availability", 0.25) == "availability 25% left"
    assert budget_left("availability", -200.82) == "availability spent, 202x"
    assert budget_left("latency", -0.4) == "latency spent, 1.4x"
