"""DAG parse time: how long each DAG file takes to build beyond what every DAG processor has already imported.

Airflow's DAG processor parses each file in a process that has imported ``airflow.sdk`` (and, here, the
Kubernetes provider's pod operator); what the file adds on top (its plugins, the platform settings, the DAG
object) is its own cost, paid on every parse. ``airflow.sdk`` loads its public names lazily, so "imported" means
with those names resolved (``dag``, ``task``, the timetables, ...): what any DAG file using the SDK pays once.
Each measurement runs in a fresh interpreter: it imports those, then times executing the DAG file. Also shown,
"cold": the same with a bare ``import airflow.sdk``, where the file pays for the SDK names it touches; and the
floor, a DAG of two TaskFlow tasks, one Param and a cron data-interval timetable with nothing of this project,
which is what Airflow itself costs any such file.

The files that build a DAG per model file (``dags/models/*.yaml``) are measured with the shipped models and with
20 generated model files more (copies of the card-fraud model under other names): Airflow re-parses the folder
continuously, so building a DAG for each model must cost each model little beyond what they share.

Target: the file that builds every model's DAGs (training and scoring) at most 50 ms per model (median, beyond
the SDK), with the shipped models and with 20 more. Exits 1 when a target is missed.

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
#: The DAG file that builds each model file's DAGs (training and scoring), and what it may cost per model.
MODEL_DAG_FILES = ("model_dags.py",)
TARGET_MS_PER_MODEL = 50.0
GENERATED_MODELS = 20
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
dags = sorted({{*namespace.get("DAGS", {{}}), *(v.dag_id for v in namespace.values() if type(v).__name__ == "DAG")}})
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


def generated_models(folder: Path, count: int) -> Path:
    """The shipped model files and ``count`` copies of the card-fraud model under other names, releases, ports and
    source assets, in ``folder``."""
    import shutil

    import yaml

    models = ROOT / "dags" / "models"
    for path in models.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    raw = yaml.safe_load((models / "card_fraud.yaml").read_text())
    for i in range(count):
        name = f"generated-model-{i:02d}"
        copy = {**raw, "registered_model": name, "dataset": {**raw["dataset"], "asset": f"{name}-source"}}
        copy["release"] = {**raw["release"], "name": f"{name}-api", "local_port": 9100 + i}
        (folder / f"generated_{i:02d}.yaml").write_text(yaml.safe_dump(copy))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env.pop("MLOPS_MODELS_DIR", None)
    measure(DAGS[0], env)  # warm the bytecode caches, as a running DAG processor has them
    report: dict[str, Any] = {"runs": args.runs, "files": {}, "per_model": {}}
    print(f"{'DAG file':<36} {'DAGs':>4} {'min (ms)':>9} {'median (ms)':>12} {'cold median':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        floor = Path(tmp) / "floor (Airflow alone)"
        floor.write_text(FLOOR_DAG)
        measure_all([*DAGS, floor], env, args.runs, report)
        (Path(tmp) / "models").mkdir()
        many = generated_models(Path(tmp) / "models", GENERATED_MODELS)
        with_many = {**env, "MLOPS_MODELS_DIR": str(many)}
        files = [d for d in DAGS if d.name in MODEL_DAG_FILES]
        measure_all(files, with_many, args.runs, report, label=f" (+{GENERATED_MODELS} models)")
    met_all = True
    print()
    for label, shipped in (
        ("the shipped models", ""),
        (f"+{GENERATED_MODELS} generated models", f" (+{GENERATED_MODELS} models)"),
    ):
        rows = [report["files"][name + shipped] for name in MODEL_DAG_FILES]
        models = min(row["dags"] for row in rows) // 2  # a training and a scoring DAG per model
        per_model = sum(row["median_ms"] for row in rows) / models
        met = per_model <= TARGET_MS_PER_MODEL
        met_all &= met
        report["per_model"][label] = {"models": models, "ms_per_model": per_model, "met": met}
        print(f"{label} ({models}): {per_model:.1f} ms per model (training and scoring DAGs, median): "
              f"{'MET' if met else 'MISSED'} (<= {TARGET_MS_PER_MODEL:.0f} ms)")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parse.json").write_text(json.dumps(report, indent=2))
    sys.exit(0 if met_all else 1)


def measure_all(
    files: list[Path], env: dict[str, str], runs: int, report: dict[str, Any], label: str = ""
) -> None:
    """Measure each file, print its row and record it."""
    for dag_file in files:
        results = [measure(dag_file, env) for _ in range(runs)]
        times = [r["ms"] for r in results]
        cold = statistics.median(measure(dag_file, env, resolve_sdk=False)["ms"] for _ in range(runs))
        median, name = statistics.median(times), dag_file.name + label
        report["files"][name] = {
            "dags": len(results[0]["dags"]), "min_ms": min(times), "median_ms": median, "cold_median_ms": cold,
        }  # fmt: skip
        count = str(
            len(results[0]["dags"]) or ""
        )  # a file's DAGs kept in its DAGS mapping or at its top level
        print(f"{name:<36} {count:>4} {min(times):9.1f} {median:12.1f} {cold:12.1f}")


if __name__ == "__main__":
    main()
