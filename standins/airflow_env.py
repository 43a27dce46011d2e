"""The embedded Airflow (``make airflow-ui``, the tests' ``airflow standalone``) starts its task processes as
docker-compose.yaml's Airflow does: the scheduler's ``multiprocessing`` settings, read from compose.

Compose runs the LocalExecutor's workers from a fork server that has imported what every task imports; a task's
process, forked from a worker, then starts without importing Airflow's task runner and the Kubernetes provider
again (about 2.5 s of CPU a task otherwise, ``[scheduler] mp_start_method`` and ``mp_forkserver_preload``).

    python -m standins.airflow_env    # NAME=value, one a line: what ``make airflow-ui`` adds to standalone's
"""

from __future__ import annotations

import yaml

from standins import COMPOSE_FILE

#: The settings of compose's Airflow taken over: how the scheduler's executor starts its processes (not the rest of
#: compose's scheduler settings, such as its health check's port).
SETTINGS = ("AIRFLOW__SCHEDULER__MP_START_METHOD", "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD")


def scheduler_env() -> dict[str, str]:
    """The scheduler's process settings of compose's Airflow services (all of them: a missing one is an error)."""
    environment = yaml.safe_load(COMPOSE_FILE.read_text())["x-airflow-common"]["environment"]
    return {name: str(environment[name]) for name in SETTINGS}


if __name__ == "__main__":
    print("\n".join(f"{name}={value}" for name, value in scheduler_env().items()))  # noqa: T201 - the output
