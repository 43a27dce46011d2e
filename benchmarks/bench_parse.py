"""DAG parse time: how long each DAG file takes to build beyond what every DAG processor has already imported.

Airflow's DAG processor parses each file in a process that has imported ``airflow.sdk`` (and, here, the
Kubernetes provider's pod operator); what the file adds on top (its plugins, the platform settings, the DAG
object) is its own cost, paid on every parse. ``airflow.sdk`` loads its public names lazily, so "imported" means
with those names resolved (``dag``, ``task``, the timetables, ...): what any DAG file using the SDK pays once.
Each measurement runs in a fresh interpreter: it imports those, then times executing the DAG file. Also shown,
"cold": the same with a bare ``import airflow.sdk``, where the file pays for the SDK names it touches; and the
floor, a DAG of two TaskFlow tasks, one Param and a cron data-interval timetable with nothing of this project,
which is what Airflow itself costs any such file.

Target: the training DAG builds in at most 50 ms (median, beyond the SDK). Exits 1 when a target is missed.

    python -m benchmarks.bench_parse [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DAGS = sorted((ROOT / "dags").glob("*.py"))
TARGETS_MS = {"ml_training_pipeline.py": 50.0}
PRELOADED = ("airflow.sdk", "airflow.providers.cncf.kubernetes.operators.pod")
FLOOR_DAG = """
import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

@task.short_circuit
def decide(value: int) -> bool:
    return value > 0

@task
def act() -> None:
    pass

@dag(
    schedule=CronDataIntervalTimetable("0 3 * * 1", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    params={"value": Param(1, type="integer")},
)
def floor() -> None:
    decide(1) >> act()

floor()
"""

# Run in the child: import what the DAG processor has, then time the DAG file alone.
CHILD = """
import contextlib, importlib, json, runpy, sys, time
for name in {preloaded!r}:
    importlib.import_module(name)
if {resolve_sdk!r}:
    sdk = importlib.import_module("airflow.sdk")
    for name in sdk.__all__:
        with contextlib.suppress(Exception):  # a name whose optional dependency is missing
            getattr(sdk, name)
started = time.perf_counter()
namespace = runpy.run_path(sys.argv[1], run_name="dag_file")
elapsed = time.perf_counter() - started
dags = sorted(v.dag_id for v in namespace.values() if type(v).__name__ == "DAG")
print("PARSE " + json.dumps({{"ms": elapsed * 1000, "dags": dags}}))
"""


def measure(dag_file: Path, env: dict[str, str], *, resolve_sdk: bool = True) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(preloaded=PRELOADED, resolve_sdk=resolve_sdk), str(dag_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PARSE ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{dag_file.name} did not parse:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return dict(json.loads(lines[-1].removeprefix("PARSE ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    measure(DAGS[0], env)  # warm the bytecode caches, as a running DAG processor has them
    report: dict[str, Any] = {"runs": args.runs, "files": {}}
    print(f"{'DAG file':<28} {'min (ms)':>9} {'median (ms)':>12} {'cold median':>12}  target")
    with tempfile.TemporaryDirectory() as tmp:
        floor = Path(tmp) / "floor (Airflow alone)"
        floor.write_text(FLOOR_DAG)
        files = [*DAGS, floor]
        met_all = measure_all(files, env, args.runs, report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parse.json").write_text(json.dumps(report, indent=2))
    sys.exit(0 if met_all else 1)


def measure_all(files: list[Path], env: dict[str, str], runs: int, report: dict[str, Any]) -> bool:
    """Measure each file, print its row and record it; True when every target is met."""
    met_all = True
    for dag_file in files:
        times = [measure(dag_file, env)["ms"] for _ in range(runs)]
        cold = statistics.median(measure(dag_file, env, resolve_sdk=False)["ms"] for _ in range(runs))
        median, target = statistics.median(times), TARGETS_MS.get(dag_file.name)
        met = target is None or median <= target
        met_all &= met
        report["files"][dag_file.name] = {
            "min_ms": min(times), "median_ms": median, "cold_median_ms": cold, "target_ms": target,
        }  # fmt: skip
        verdict = "" if target is None else f"{'MET' if met else 'MISSED'} (<= {target:.0f} ms)"
        print(f"{dag_file.name:<28} {min(times):9.1f} {median:12.1f} {cold:12.1f}  {verdict}")
    return met_all


if __name__ == "__main__":
    main()
