"""Keys that make every task idempotent: outputs per data interval, MLflow runs and versions per DAG run."""

from __future__ import annotations

import re
from typing import Any

from contract import run_key


def partition_key(dag_run: Any) -> str:
    """Name the output folder of a DAG run: its data interval, or its run id when it has none.

    Re-running (or backfilling) the same interval writes to the same folder and replaces it whole. A run
    triggered without a logical date (the UI's and the REST API's default in Airflow 3) has no data interval.
    """
    start, end = dag_run.data_interval_start, dag_run.data_interval_end
    if start is not None and end is not None:
        return f"{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run.run_id)


#: Macros the pipeline's templates use; pass as ``user_defined_macros``. Prefixed, because the template
#: context's own names (``partition_key`` among them) take precedence over user-defined macros.
MACROS = {"mlops_partition_key": partition_key, "mlops_run_key": run_key}
