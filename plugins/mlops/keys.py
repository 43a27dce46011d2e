"""Keys that make every task idempotent: outputs, MLflow runs and versions per DAG run."""

from __future__ import annotations

import re
from typing import Any

from contract import run_key


def output_key(dag_run: Any) -> str:
    """Name the output folder of a DAG run: ``<data interval>/<run id>``, or its run id when it has no interval (a
    run triggered without a logical date, the UI's and the REST API's default in Airflow 3).

    A retry or a clear of the run writes under its own folder again; another run of the same interval (other
    settings, a backfill) gets a folder of its own, so that it never replaces what an earlier run's model version
    learnt from. The interval comes first, so a week's runs list together.
    """
    run = re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run.run_id)
    start, end = dag_run.data_interval_start, dag_run.data_interval_end
    if start is not None and end is not None:
        return f"{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}/{run}"
    return run


#: Macros the pipeline's templates use; pass as ``user_defined_macros``. Prefixed, because the template
#: context's own names take precedence over user-defined macros.
MACROS = {"mlops_output_key": output_key, "mlops_run_key": run_key}
