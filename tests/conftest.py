"""Shared fixtures. Airflow reads its settings at import, so the isolated AIRFLOW_HOME is set here first."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MPLBACKEND": "Agg",
        # The suite runs more busy processes than the machine has cores: OpenMP's threads (XGBoost's) that spin
        # while they wait would burn the cores the others need (twice the CPU of a fit under that contention).
        # The stages get it too: subprocesses inherit it, and the local pod runtime passes the worker's OMP_*.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
)

from contract import XCOM_DIR_ENV  # noqa: E402 - after the environment above
from ml.synthetic import generate  # noqa: E402 - after the environment above

# Fixture stacks deployed with the real terraform (used by the drift check's tests and its DAG's).
pytest_plugins = ["tests.terraform.fixtures"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's MLflow keeps its data and accounts (tests that break its artifact store find it)."""
    return tmp_path_factory.mktemp("mlflow", numbered=False)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_root: Path) -> Iterator[str]:
    """A real MLflow tracking server on loopback as ``make mlflow-up`` runs it (the basic-auth app, SQLite backend,
    local artifact root). This process, and the stages and servers it starts, use the pipeline's account, as the
    stages get it from the Airflow connection under ``make demo``."""
    from standins.mlflow_server import credentials_env, start

    port = free_port()
    process = start(mlflow_root, port)
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", url)
        for name, value in credentials_env(
            mlflow_root, port, user="pipeline", airflow_connection=False
        ).items():
            patch.setenv(name, value)
        yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def trained_model(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One prepared table (20,000 synthetic rows) and one XGBoost model trained on it, logged to the session's
    MLflow: shared by the tests that need a real model, each registering it under a name of its own."""
    from ml.prepare import prepare
    from ml.train import train
    from tests.helpers import train_config

    prepared = str(tmp_path_factory.mktemp("shared-model") / "prepared")
    prepare("synthetic://card-transactions?rows=20000&seed=8", "is_fraud", prepared, time_column="timestamp",
            drop_columns=["transaction_id"])  # fmt: skip
    trained = train(prepared, train_config(n_estimators=60), experiment="tests", run_key="tests/shared-model")
    return {"prepared": prepared, "trained": trained}


@pytest.fixture(scope="session")
def quick_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The platform settings with a shorter local canary pause."""
    from mlops.platform_config import PLATFORM_FILE
    from tests.helpers import write_platform

    return write_platform(
        tmp_path_factory.mktemp("platform") / "platform.yaml", PLATFORM_FILE, pause_seconds=1
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) in the session's AIRFLOW_HOME."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def synthetic_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 synthetic transactions as Parquet."""
    path = tmp_path_factory.mktemp("raw") / "transactions.parquet"
    generate(30_000, seed=7).to_parquet(path, index=False)
    return path


@pytest.fixture(autouse=True)
def _import_path_as_found() -> Iterator[None]:
    """Each test leaves ``sys.path`` as it found it. MLflow's model loaders put the model's code folder first for
    good (the stages load through ``ml.tracking.load_model``, which puts it back; tests may call MLflow's), and a
    later test's spawned processes, such as a Dask LocalCluster's workers, would import ``ml`` from there."""
    path = list(sys.path)
    yield
    sys.path[:] = path


@pytest.fixture()
def xcom_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the stages' XCom result at a temporary folder."""
    monkeypatch.setenv(XCOM_DIR_ENV, str(tmp_path / "xcom"))
    return tmp_path / "xcom"


#: The tests on the one ``airflow standalone`` a test process starts (``tests/e2e/conftest.py``): one xdist worker
#: runs them all.
STANDALONE_TESTS = "tests/e2e/standalone/"


def _on_airflow(item: pytest.Item) -> bool:
    return "standalone" in getattr(item, "fixturenames", ())


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``make test``'s ``-n``) a test module runs whole in one worker, so its module fixtures
    are built once, and the tests on a real ``airflow standalone`` run in one worker, on the one Airflow it starts.
    They are handed out in the order ``pytest_collection_modifyitems`` gives."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return STANDALONE_TESTS if module.startswith(STANDALONE_TESTS) else module

    config.option.loadscopereorder = False
    return ByModule(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the most tests on a real MLflow server (which train, register and serve models: the long
    ones) come first, so that under xdist the workers do not end on them one by one. The tests on a real ``airflow
    standalone`` run first under xdist (one worker starts Airflow with them, the others run the rest meanwhile; three
    Airflows side by side overloaded 2 cores) and last without it: there Airflow starts in the background with the
    first end-to-end test (``tests/e2e/conftest.py``), so its start-up overlaps the rest of the suite."""
    weight: dict[str, int] = {}
    for item in items:
        uses_mlflow = "mlflow_server" in getattr(item, "fixturenames", ())
        weight[_module(item.nodeid)] = weight.get(_module(item.nodeid), 0) + uses_mlflow
    in_worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    # Stable: the tests on Airflow keep their order (a module may build on what an earlier one ran).
    items.sort(
        key=lambda item: (
            _on_airflow(item) != in_worker,
            0 if _on_airflow(item) else -weight[_module(item.nodeid)],
        )
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session's Airflow home (its SQLite database, logs) goes with the session."""
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
