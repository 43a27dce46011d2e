"""GPU benchmark: the train stage around XGBoost's fit on CUDA, 20M synthetic rows.

The GPU pays for itself only when the stage around the fit is thin: this writes the synthetic stream to Parquet
(a row group at a time), prepares it, and runs the train stage with the platform's training settings on
``--device`` (``cuda``: the GPU; ``cpu`` runs the same measurement on a machine without one), each step in a
fresh interpreter against a real MLflow server on loopback, as ``make bench`` does. It prints the stage's wall
time against the fit's (``train_seconds``: the early-stopped fit and the refit).

Target (``MET``/``MISSED``): the train stage <= 1.5x its fit. Exits 1 when missed, 2 when ``cuda`` is asked for and
no GPU is usable.

    python -m benchmarks.bench_gpu [--rows 20000000] [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks._stack import settled_mlflow
from benchmarks.bench_scale import capped_step

#: The train stage's wall time over its fit.
MAX_STAGE_OVER_FIT = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--memory-cap-gib", type=float, default=64.0)
    args = parser.parse_args()

    from ml.train import resolve_device
    from mlops.platform_config import load_platform

    try:
        resolve_device(args.device, "xgboost")
    except Exception as err:  # the stage's own refusal, with what it found
        print(f"cannot run on {args.device}: {err}")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp, settled_mlflow(Path(tmp)):
        raw, prepared = Path(tmp) / "raw.parquet", Path(tmp) / "prepared"
        print(f"{args.rows:,} rows, device {args.device}:", flush=True)
        capped_step("generate_parquet", args.memory_cap_gib, rows=args.rows, seed=1, output=str(raw))
        capped_step(
            "prepare", args.memory_cap_gib, source=str(raw), target="is_fraud", output=str(prepared),
            time_column="timestamp", drop_columns=["transaction_id"],
        )  # fmt: skip
        config = {**load_platform().training.model_dump(), "device": args.device}
        trained = capped_step(
            "train", args.memory_cap_gib, prepared_uri=str(prepared), experiment="bench-gpu",
            run_key=f"gpu/{args.rows}", config=config,
        )  # fmt: skip
    stage, fit = trained["seconds"], trained["result"]["train_seconds"]
    ratio = stage / fit
    print(f"\ntrain stage {stage:.1f} s, fit {fit:.1f} s on {trained['result']['device']}: {ratio:.2f}x")
    met = ratio <= MAX_STAGE_OVER_FIT
    print(f"{'MET ' if met else 'MISSED'}  train stage <= {MAX_STAGE_OVER_FIT}x its fit ({args.rows:,} rows)")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
