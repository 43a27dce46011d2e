"""Keys that make every task idempotent: outputs per data interval, MLflow runs and versions per DAG run."""

from __future__ import annotations

import re
from datetime import datetime


def partition_key(
    data_interval_start: datetime | None, data_interval_end: datetime | None, run_id: str
) -> str:
    """Name the output folder of a run: its data interval, or its run id when it has no interval.

    Re-running (or backfilling) the same interval writes to the same folder and replaces it whole.
    """
    if data_interval_start is not None and data_interval_end is not None:
        return f"{data_interval_start:%Y%m%dT%H%M%S}_{data_interval_end:%Y%m%dT%H%M%S}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def run_key(dag_id: str, run_id: str) -> str:
    """The key of a DAG run in MLflow: one MLflow run and at most one model version per key."""
    return f"{dag_id}/{run_id}"


#: Macros the pipeline's templates use; pass as ``user_defined_macros``. Prefixed, because the template
#: context's own names (``partition_key`` among them) take precedence over user-defined macros.
MACROS = {"mlops_partition_key": partition_key, "mlops_run_key": run_key}
