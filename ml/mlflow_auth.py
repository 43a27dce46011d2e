"""Users and grants of an MLflow server run with its basic-auth app (``mlflow server --app-name basic-auth``).

An idempotent one-shot, run as the server's admin: it creates (or re-passwords) the pipeline's user and the
read-only user, creates the pipeline's experiments and registered models if they do not exist yet, and grants
the pipeline ``EDIT`` on them (runs, artifacts, model versions, alias moves such as ``champion``) and the
read-only user ``READ``. With the auth config's ``default_permission = READ``, every other user can only read.

docker-compose.yaml runs it as the ``mlflow-auth-init`` service, the embedded default's MLflow on every start (with
the same arguments); on a cluster it runs as a Job with the ML stage image, which carries it
(``python -m ml.mlflow_auth``). Secrets come from the environment only:

* ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``: the server and its admin;
* ``MLFLOW_PIPELINE_USERNAME``, ``MLFLOW_PIPELINE_PASSWORD``: the pipeline's service account;
* ``MLFLOW_READER_USERNAME``, ``MLFLOW_READER_PASSWORD``: the read-only account (the inference API).

    python -m ml.mlflow_auth --experiment train_card_fraud --registered-model card-fraud-detector \
        --experiment train_adult_income --registered-model adult-income-classifier

``python -m mlops.models mlflow-auth`` runs it with every model file's experiment and registered model.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The basic-auth app's REST routes (mlflow/server/auth/routes.py; that module needs the server's Flask, which the
# stage image's mlflow-skinny does not carry).
GET_USER = "/api/2.0/mlflow/users/get"
CREATE_USER = "/api/2.0/mlflow/users/create"
UPDATE_USER_PASSWORD = "/api/2.0/mlflow/users/update-password"
GRANT_PERMISSION = "/api/3.0/mlflow/users/permissions/grant"
REVOKE_PERMISSION = "/api/3.0/mlflow/users/permissions/revoke"

EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"
#: What the pipeline's account may do on its experiments and models: write, but not delete or manage grants.
PIPELINE_PERMISSION = "EDIT"
READER_PERMISSION = "READ"


@dataclass(frozen=True)
class Account:
    username: str
    password: str

    @classmethod
    def from_env(cls, prefix: str) -> Account:
        """The account in ``<prefix>_USERNAME`` and ``<prefix>_PASSWORD`` (both required)."""
        missing = [
            f"{prefix}_{key}" for key in ("USERNAME", "PASSWORD") if not os.environ.get(f"{prefix}_{key}")
        ]
        if missing:
            raise SystemExit(f"set {', '.join(missing)}")
        return cls(os.environ[f"{prefix}_USERNAME"], os.environ[f"{prefix}_PASSWORD"])


class AuthAdmin:
    """The admin's side of the basic-auth app's REST API, through MLflow's own HTTP client (credentials, TLS and
    retries from the same ``MLFLOW_TRACKING_*`` settings as every other MLflow client)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.utils.credentials import get_default_host_creds

        self.host_creds = get_default_host_creds(tracking_uri)

    def request(self, endpoint: str, method: str, **kwargs: Any) -> Any:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = verify_rest_response(http_request(self.host_creds, endpoint, method, **kwargs), endpoint)
        return response.json() if response.content else {}

    def ensure_user(self, account: Account) -> None:
        """Create the user, or set its password to the given one (so that rotating the secret and re-running works)."""
        from mlflow.exceptions import RestException

        try:
            self.request(GET_USER, "GET", params={"username": account.username})
        except RestException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.request(
                CREATE_USER, "POST", json={"username": account.username, "password": account.password}
            )
            log.info("created user %s", account.username)
            return
        self.request(
            UPDATE_USER_PASSWORD, "PATCH", json={"username": account.username, "password": account.password}
        )
        log.info("user %s exists; password set", account.username)

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Make ``username``'s grant on the resource exactly ``permission`` (replacing a different one)."""
        from mlflow.exceptions import RestException

        grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        try:
            self.request(GRANT_PERMISSION, "POST", json={**grant, "permission": permission})
        except RestException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self.request(REVOKE_PERMISSION, "POST", json=grant)
            self.request(GRANT_PERMISSION, "POST", json={**grant, "permission": permission})
        log.info("granted %s %s on %s %s", username, permission, resource_type, resource_id)


def experiment_id(name: str) -> str:
    """The id of the named experiment, created if missing."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    return str(experiment.experiment_id if experiment is not None else client.create_experiment(name))


def ensure_registered_model(name: str) -> str:
    """The registered model's name, created if missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return name


def configure(
    tracking_uri: str, pipeline: Account, reader: Account, experiments: Sequence[str], models: Sequence[str]
) -> None:
    """Create the two users and grant them their permissions on the pipeline's experiments and models."""
    admin = AuthAdmin(tracking_uri)
    admin.ensure_user(pipeline)
    admin.ensure_user(reader)
    resources = [(EXPERIMENT, experiment_id(name)) for name in experiments]
    resources += [(REGISTERED_MODEL, ensure_registered_model(name)) for name in models]
    for resource_type, resource_id in resources:
        admin.grant(pipeline.username, resource_type, resource_id, PIPELINE_PERMISSION)
        admin.grant(reader.username, resource_type, resource_id, READER_PERMISSION)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", action="append", default=[], help="the pipeline's experiment (repeatable)"
    )
    parser.add_argument(
        "--registered-model", action="append", default=[], help="the pipeline's registered model (repeatable)"
    )
    args = parser.parse_args(argv)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise SystemExit("set MLFLOW_TRACKING_URI (and the admin's MLFLOW_TRACKING_USERNAME and _PASSWORD)")
    configure(
        tracking_uri,
        Account.from_env("MLFLOW_PIPELINE"),
        Account.from_env("MLFLOW_READER"),
        args.experiment,
        args.registered_model,
    )


if __name__ == "__main__":
    main()
