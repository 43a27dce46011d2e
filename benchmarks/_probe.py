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
    if step == "train":
        from ml.train import TrainConfig, train

        config = TrainConfig(**kwargs.pop("config"))
        return train(config=config, **kwargs)
    if step == "evaluate":
        from ml.evaluate import evaluate

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
