"""Scale benchmark: prepare and train on 10M and 100M synthetic rows on one machine, wall time and peak memory.

For each size, the synthetic stream is written to Parquet as it is generated (a row group at a time), then
``prepare`` and ``train`` (XGBoost with the platform's settings but a fixed small round count and no refit: the
data path is measured, not the model) each run in a fresh interpreter against a real MLflow server on loopback,
as ``make bench`` runs its steps. A step whose memory passes ``--memory-cap-gib`` is stopped (so that the machine
stays usable) and reported as such.

Targets (``MET``/``MISSED``): each stage's peak memory <= 8 GiB at every size; time grows linearly with the rows
(the largest size's time per row at most 1.25x the smallest's). Exits 1 when a target is missed.

    python -m benchmarks.bench_scale [--sizes 10000000 100000000] [--rounds 10] [--memory-cap-gib 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._stack import settled_mlflow

ROOT = Path(__file__).resolve().parents[1]
MAX_PEAK_GIB = 8.0
#: Linear growth: the time per row of the largest size over the smallest's.
MAX_PER_ROW_GROWTH = 1.25
STAGES = ("prepare", "train")


def capped_step(name: str, cap_gib: float, **kwargs: Any) -> dict[str, Any]:
    """Run one step as ``make bench`` does, stopping it when its resident memory passes ``cap_gib``."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._probe", name, json.dumps(kwargs)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > cap_gib * 2**30:
            process.kill()
            process.wait()
            print(
                f"  {name:<18} stopped at {peak / 2**30:.1f} GiB (over the {cap_gib:.0f} GiB cap)", flush=True
            )
            return {"seconds": time.perf_counter() - started, "peak_rss_mib": peak / 2**20, "stopped": True}
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"step {name} failed ({process.returncode}):\n{stdout[-3000:]}{stderr[-3000:]}")
    measured = dict(json.loads(lines[-1].removeprefix("BENCH ")))
    print(f"  {name:<18} {measured['seconds']:8.1f} s  {measured['peak_rss_mib']:8.0f} MiB", flush=True)
    return {**measured, "stopped": False}


def run_size(work: Path, rows: int, rounds: int, cap_gib: float) -> dict[str, dict[str, Any]]:
    from mlops.platform_config import load_platform

    raw, prepared = work / f"raw-{rows}.parquet", work / f"prepared-{rows}"
    print(f"{rows:,} rows:", flush=True)
    measured = {"generate": capped_step("generate_parquet", cap_gib, rows=rows, seed=1, output=str(raw))}
    measured["prepare"] = capped_step(
        "prepare", cap_gib, source=str(raw), target="is_fraud", output=str(prepared), time_column="timestamp",
        drop_columns=["transaction_id"],
    )  # fmt: skip
    if not measured["prepare"]["stopped"]:
        config = {**load_platform().training.model_dump(), "n_estimators": rounds, "refit": False}
        measured["train"] = capped_step(
            "train", cap_gib, prepared_uri=str(prepared), experiment="bench-scale", run_key=f"scale/{rows}",
            config=config,
        )  # fmt: skip
    raw.unlink(missing_ok=True)
    return measured


def targets(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, bool]:
    sizes = sorted(results)
    met = {}
    for stage in STAGES:
        for rows in sizes:
            step = results[rows].get(stage)
            met[f"{stage} {rows:,} rows: peak memory <= {MAX_PEAK_GIB:.0f} GiB"] = bool(
                step and not step["stopped"] and step["peak_rss_mib"] <= MAX_PEAK_GIB * 1024
            )
        small, large = results[sizes[0]].get(stage), results[sizes[-1]].get(stage)
        if len(sizes) > 1:
            linear = bool(small and large and not large["stopped"]) and (
                large["seconds"] / sizes[-1] <= MAX_PER_ROW_GROWTH * small["seconds"] / sizes[0]
            )
            met[f"{stage}: time per row at {sizes[-1]:,} <= {MAX_PER_ROW_GROWTH}x at {sizes[0]:,}"] = linear
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--rounds", type=int, default=10, help="boosting rounds of the train stage")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, settled_mlflow(Path(tmp)):
        results = {
            rows: run_size(Path(tmp), rows, args.rounds, args.memory_cap_gib) for rows in sorted(args.sizes)
        }
    print("\n| Stage | Rows | Wall time (s) | Peak memory (MiB) |\n|---|---:|---:|---:|")
    for rows, measured in results.items():
        for stage, step in measured.items():
            note = " (stopped at the cap)" if step["stopped"] else ""
            print(f"| {stage} | {rows:,} | {step['seconds']:.1f} | {step['peak_rss_mib']:.0f}{note} |")
    met = targets(results)
    for target, ok in met.items():
        print(f"{'MET ' if ok else 'MISSED'}  {target}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
