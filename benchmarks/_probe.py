"""Run one pipeline step in this process and print its wall time and peak memory as one JSON line.

Each benchmark step runs in a fresh interpreter so that its peak resident memory is its own.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, is_dataclass
from typing import Any


def time_to_quality(
    prepared_uri: str, target_average_precision: float, config: dict[str, Any]
) -> dict[str, Any]:
    """How long XGBoost, with these training settings (the platform's defaults), takes to reach ``target_average_precision`` on the
    test split: the early-stopped fit (no refit) timed round by round from the start of ``fit_model`` (encoding and
    quantising included), and its model's test average precision after each round (XGBoost's ``iteration_range``).
    The first round that reaches the target, and its time; None when no round does."""
    import xgboost
    from sklearn.metrics import average_precision_score

    from ml.storage import read_manifest, read_published_table
    from ml.train import TrainConfig, fit_model, resolve_device

    manifest = read_manifest(prepared_uri)
    splits = {
        name: read_published_table(prepared_uri, f"{name}.parquet")
        for name in ("train", "validation", "test")
    }
    settings = TrainConfig(**{**config, "refit": False})

    class Clock(xgboost.callback.TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            self.times.append(time.perf_counter())
            return False

    clock = Clock()
    started = time.perf_counter()
    fit = fit_model(settings, splits["train"], splits["validation"], features=manifest["features"],
                    categorical=manifest["categorical"], target=manifest["target"],
                    device=resolve_device(settings.device, settings.model_type), callbacks=[clock])  # fmt: skip
    encoded = fit.pipeline[:-1].transform(splits["test"][manifest["features"]])
    model, labels = fit.pipeline[-1], splits["test"][manifest["target"]].to_numpy()

    def test_ap(rounds: int) -> float:
        scores = model.predict_proba(encoded, iteration_range=(0, rounds))[:, 1]
        return float(average_precision_score(labels, scores))

    # Coarse steps to the first that reaches the target, then round by round within the last step.
    step, reached = 10, None
    for rounds in range(step, len(clock.times) + step, step):
        rounds = min(rounds, len(clock.times))
        if test_ap(rounds) >= target_average_precision:
            reached = next(r for r in range(max(1, rounds - step + 1), rounds + 1)
                           if test_ap(r) >= target_average_precision)  # fmt: skip
            break
    return {
        "rounds": len(clock.times),
        "fit_seconds": clock.times[-1] - started,
        "reached_round": reached,
        "seconds_to_quality": None if reached is None else clock.times[reached - 1] - started,
        "average_precision_at_end": test_ap(len(clock.times)),
    }


def run_step(step: str, kwargs: dict[str, Any]) -> Any:
    if step == "generate":
        from pathlib import Path

        from ml.synthetic import generate, write

        write(generate(kwargs["rows"], seed=kwargs["seed"]), Path(kwargs["output"]))
        return {"rows": kwargs["rows"]}
    if step == "generate_parquet":  # written as it is generated: memory of one row group
        from pathlib import Path

        from ml.synthetic import write_generated

        write_generated(kwargs["rows"], Path(kwargs["output"]), seed=kwargs["seed"])
        return {"rows": kwargs["rows"]}
    if step == "prepare":
        from ml.prepare import prepare

        return prepare(**kwargs)
    if step == "time_to_quality":
        return time_to_quality(**kwargs)
    if step == "train":
        from ml.train import TrainConfig, train

        config = TrainConfig(**kwargs.pop("config"))
        return train(config=config, **kwargs)
    if step == "evaluate":
        from ml.compare import Rule
        from ml.evaluate import evaluate

        kwargs["rule"] = Rule(**kwargs["rule"])
        return evaluate(**kwargs)
    raise SystemExit(f"unknown step {step!r}")


def main() -> None:
    step, kwargs = sys.argv[1], json.loads(sys.argv[2])
    started = time.perf_counter()
    result = run_step(step, kwargs)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    payload = asdict(result) if is_dataclass(result) else result
    sys.stdout.write(
        "BENCH " + json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "result": payload}) + "\n"
    )


if __name__ == "__main__":
    main()
