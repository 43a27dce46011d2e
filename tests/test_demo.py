"""The demo's terminal: Airflow's and the pods' lines go to the log file, a line per task to the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.demo import quiet, tail


def test_airflow_and_its_subprocesses_write_to_the_log_file_and_the_terminal_keeps_the_progress(
    tmp_path: Path, capfd
) -> None:
    log_file = tmp_path / "demo.log"
    with quiet(log_file) as terminal:
        print("airflow: a log line")
        sys.stderr.write("airflow: a warning\n")
        subprocess.run([sys.executable, "-c", "print('pod: a stage line')"], check=True)
        terminal.write("  12:00:00  prepare              running\n")
    shown = capfd.readouterr()
    assert shown.out == "  12:00:00  prepare              running\n" and shown.err == ""
    assert log_file.read_text().splitlines() == [
        "airflow: a log line",
        "airflow: a warning",
        "pod: a stage line",
    ]
    print("after: the terminal again")
    assert capfd.readouterr().out == "after: the terminal again\n"


def test_a_failed_task_shows_the_end_of_the_log_and_where_the_rest_is(tmp_path: Path) -> None:
    log_file = tmp_path / "demo.log"
    log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    shown = tail(log_file, 3)
    assert shown == f"      | line 97\n      | line 98\n      | line 99\n      (the whole log: {log_file})\n"
