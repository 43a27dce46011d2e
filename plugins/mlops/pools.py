"""Create the Airflow pools the DAGs use, from platform.yaml and the model files; run once after
``airflow db migrate`` (and after adding a model).

    python -m mlops.pools

A task in a pool that does not exist is never scheduled, so every set-up (``make demo``, ``make airflow-ui``,
the compose stack's init) runs this. Setting a pool again only resets its slots and description.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

from mlops.models import load_models
from mlops.platform_config import load_platform


def pools() -> dict[str, tuple[int, str]]:
    """Name -> (slots, description) of every pool the DAGs name: one per model's release."""
    platform = load_platform()
    return {
        model.pool(platform): (
            1,
            f"Releases of {model.registered_model} ({model.release.namespace}/{model.release.name}): one deploy, "
            "watch, promote or rollback at a time, all runs",
        )
        for model in load_models()
    }


def main() -> None:
    airflow = shutil.which("airflow") or "airflow"
    # include_deferred: a deferred watch keeps its slot, so no other run's release starts meanwhile. One import of
    # all of them: each `airflow` command pays the CLI's start-up (seconds), whatever the number of models.
    wanted = {
        name: {"slots": slots, "description": description, "include_deferred": True}
        for name, (slots, description) in pools().items()
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(wanted, file)
        file.flush()
        subprocess.run([airflow, "pools", "import", file.name], check=True, stdout=sys.stderr)


if __name__ == "__main__":
    main()
