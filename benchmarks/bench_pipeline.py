"""Pipeline benchmark: wall time and peak memory of prepare, train and evaluate on synthetic data.

- 1,000,000 rows: prepare; train XGBoost and the RandomForest baseline on the same splits; evaluate both.
- 10,000,000 rows: prepare alone.

Targets: XGBoost reaches the RandomForest baseline's test average precision in at most a tenth of the
baseline's fit time (time to quality: its early-stopped fit timed round by round, each round's model scored on the
test split), and its served model's average precision is at least the baseline's; its train stage (in a fresh interpreter: imports, reading, lineage, the fit, logging the model) takes at
most 1.3x the fit, and its evaluate stage at most 5 s; 10M rows are prepared with a peak memory under 4 GiB. Each
step runs in its own process (its peak memory is its own) against a real MLflow server on loopback. Exits 1 when a
target is missed.

    python -m benchmarks.bench_pipeline [--rows 1000000] [--large-rows 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._stack import settled_mlflow

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MAX_PREPARE_PEAK_MIB = 4096
#: XGBoost must reach the baseline's quality in this fraction of the baseline's fit time.
MAX_TIME_TO_QUALITY_SHARE = 0.1
#: The train stage around its fit (reading, lineage, logging the model), as a multiple of the fit.
MAX_TRAIN_OVERHEAD = 1.3
MAX_EVALUATE_SECONDS = 5.0


def step(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run one step in a fresh interpreter and return its measurements."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks._probe", name, json.dumps(kwargs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("BENCH ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(
            f"step {name} failed ({completed.returncode}):\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
        )
    measured = json.loads(lines[-1].removeprefix("BENCH "))
    print(f"  {name:<22} {measured['seconds']:8.1f} s  {measured['peak_rss_mib']:8.0f} MiB", flush=True)
    return dict(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large-rows", type=int, default=10_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, settled_mlflow(Path(tmp)):
        report = run_benchmarks(Path(tmp), args.rows, args.large_rows)

    report["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    sys.exit(0 if all(report["targets"].values()) else 1)


def run_benchmarks(work: Path, rows: int, large_rows: int) -> dict[str, Any]:
    """Measure every step; training uses the pipeline's default config, as the DAG runs it."""
    # Long on purpose: the benchmark's steps in order, each measured, then the figures and targets they give.
    from mlops.platform_config import load_platform

    raw, prepared = work / "raw.parquet", work / "prepared"
    print(f"{rows:,} rows:")
    measured: dict[str, Any] = {"generate": step("generate", rows=rows, seed=1, output=str(raw))}
    measured["prepare"] = step(
        "prepare", source=str(raw), target="is_fraud", output=str(prepared), time_column="timestamp",
        drop_columns=["transaction_id"],
    )  # fmt: skip
    for model_type in ("xgboost", "random_forest"):
        trained = step(
            "train", prepared_uri=str(prepared), experiment="bench", run_key=f"bench/{model_type}",
            config={**load_platform().training.model_dump(), "model_type": model_type},
        )  # fmt: skip
        measured[f"train_{model_type}"] = trained
        measured[f"evaluate_{model_type}"] = step(
            "evaluate", prepared_uri=str(prepared), model_uri=trained["result"]["model_uri"],
            run_id=trained["result"]["run_id"], registered_model_name="bench", min_average_precision=0.0,
            rule={"policy": "superior", "min_improvement": 0.0, "margin": 0.0}, champion_alias=load_platform().registry.production_alias,
        )  # fmt: skip

    rf_ap = measured["evaluate_random_forest"]["result"]["metrics"]["average_precision"]
    measured["time_to_quality"] = step("time_to_quality", prepared_uri=str(prepared), target_average_precision=rf_ap,
                                       config=load_platform().training.model_dump())  # fmt: skip

    large_raw = work / "large.parquet"
    print(f"{large_rows:,} rows:")
    measured["generate_large"] = step("generate", rows=large_rows, seed=2, output=str(large_raw))
    measured["prepare_large"] = step(
        "prepare", source=str(large_raw), target="is_fraud", output=str(work / "prepared-large"),
        time_column="timestamp", drop_columns=["transaction_id"],
    )  # fmt: skip

    xgb_fit = measured["train_xgboost"]["result"]["train_seconds"]
    xgb_stage, xgb_evaluate = measured["train_xgboost"]["seconds"], measured["evaluate_xgboost"]["seconds"]
    rf_fit = measured["train_random_forest"]["result"]["train_seconds"]
    xgb_ap = measured["evaluate_xgboost"]["result"]["metrics"]["average_precision"]
    quality = measured["time_to_quality"]["result"]
    to_quality = quality["seconds_to_quality"]
    return {
        "rows": rows,
        "large_rows": large_rows,
        "steps": measured,
        "comparison": {
            "xgboost_fit_seconds": xgb_fit,
            "random_forest_fit_seconds": rf_fit,
            "fit_speedup": rf_fit / xgb_fit,
            "xgboost_seconds_to_baseline_quality": to_quality,
            "xgboost_round_reaching_baseline_quality": quality["reached_round"],
            "train_stage_over_fit": xgb_stage / xgb_fit,
            "xgboost_average_precision": xgb_ap,
            "random_forest_average_precision": rf_ap,
        },
        "targets": {
            f"xgboost reaches the baseline's test AP in <= 1/{1 / MAX_TIME_TO_QUALITY_SHARE:.0f} of its fit time": (
                to_quality is not None and to_quality <= MAX_TIME_TO_QUALITY_SHARE * rf_fit
            ),
            "xgboost average precision >= baseline": xgb_ap >= rf_ap,
            f"train stage <= {MAX_TRAIN_OVERHEAD}x its fit ({rows:,} rows)": xgb_stage
            <= MAX_TRAIN_OVERHEAD * xgb_fit,
            f"evaluate <= {MAX_EVALUATE_SECONDS:.0f} s ({rows:,} rows)": xgb_evaluate <= MAX_EVALUATE_SECONDS,
            f"prepare {large_rows:,} rows under {MAX_PREPARE_PEAK_MIB} MiB": (
                measured["prepare_large"]["peak_rss_mib"] < MAX_PREPARE_PEAK_MIB
            ),
        },
    }


def print_table(report: dict[str, Any]) -> None:
    steps, comparison = report["steps"], report["comparison"]
    rows, large = f"{report['rows']:,}", f"{report['large_rows']:,}"
    table = [
        ("generate", rows, steps["generate"], ""),
        ("prepare", rows, steps["prepare"], ""),
        ("train XGBoost", rows, steps["train_xgboost"], f"fit {comparison['xgboost_fit_seconds']:.1f} s"),
        ("train RandomForest", rows, steps["train_random_forest"], f"fit {comparison['random_forest_fit_seconds']:.1f} s"),
        ("evaluate XGBoost", rows, steps["evaluate_xgboost"], f"AP {comparison['xgboost_average_precision']:.4f}"),
        ("evaluate RandomForest", rows, steps["evaluate_random_forest"], f"AP {comparison['random_forest_average_precision']:.4f}"),
        ("generate", large, steps["generate_large"], ""),
        ("prepare", large, steps["prepare_large"], ""),
    ]  # fmt: skip
    print("\n| Step | Rows | Wall time (s) | Peak memory (MiB) | Notes |\n|---|---:|---:|---:|---|")
    for name, n, measured, note in table:
        print(f"| {name} | {n} | {measured['seconds']:.1f} | {measured['peak_rss_mib']:.0f} | {note} |")
    reached = comparison["xgboost_seconds_to_baseline_quality"]
    print("\nXGBoost reaches the RandomForest baseline's test AP "
          + (f"at round {comparison['xgboost_round_reaching_baseline_quality']}, after {reached:.1f} s "
             f"({comparison['random_forest_fit_seconds'] / reached:.1f}x sooner than the baseline's fit)"
             if reached is not None else "never")
          + f"; its whole fit is {comparison['fit_speedup']:.1f}x faster; its train stage takes "
          f"{comparison['train_stage_over_fit']:.2f}x its fit.")  # fmt: skip
    for target, met in report["targets"].items():
        print(f"{'MET ' if met else 'MISSED'}  {target}")


if __name__ == "__main__":
    main()
