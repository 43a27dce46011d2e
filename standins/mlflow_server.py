"""Start, wait for and stop the embedded MLflow tracking server (SQLite backend, local artifact root), behind
MLflow's basic-auth app as docker-compose.yaml runs it.

Artifacts are served through the tracking server (``--artifacts-destination``), as in production where the
server proxies S3: stages need only ``MLFLOW_TRACKING_URI``, never direct access to the artifact store.

Authentication is compose's: ``--app-name basic-auth`` with compose/mlflow-basic-auth.ini (every user reads, only
a grant writes), its user database moved to SQLite beside the tracking store. Three accounts are generated once,
with random passwords, into ``credentials.json`` (mode 0600) under the root: the server's admin, the pipeline's
and a reader. On every start the one-shot compose runs as ``mlflow-auth-init`` (``python -m mlops.models mlflow-auth``: ``ml.mlflow_auth``
with every model file's experiment and registered model) creates the pipeline's and the reader's users and grants:
the pipeline's may write runs, versions and aliases of each model's experiment and registered model (``EDIT``), the reader may read. Anything else than ``/health``
asks for a user (401), so that only the pipeline moves the ``champion`` alias or sets the version tags the
inference API trusts. ``exec`` runs a command with an account in its environment, never on a command line.

The root and what the server keeps there are the owner's only (folders 0700, databases and credentials 0600): the
server runs under umask 077, and a root of an older version (a 0644 database, 0755 artifacts) is tightened on
start.

The server binds loopback unless ``--host`` says otherwise. ``start`` uses a server already answering on the
port only if it is the one it started from the same ``--root`` (its pid file): anything else answering there is
refused unless ``--external-ok`` is given, so that the demo never writes to a foreign tracking server by chance.

    python -m standins.mlflow_server start --root .local/mlflow --port 5000 [--host 127.0.0.1] [--external-ok]
    python -m standins.mlflow_server exec --root .local/mlflow --port 5000 [--user reader] [--airflow-connection] \\
        -- COMMAND [ARGS...]
    python -m standins.mlflow_server stop --root .local/mlflow
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

import psutil
import yaml

from contract import replacing
from ml.mlflow_auth import Account
from standins import COMPOSE_FILE

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PID_FILE = "server.pid"
#: The accounts, generated once (mode 0600): ``{"admin"|"pipeline"|"reader": {"username", "password"}, ...}``.
CREDENTIALS_FILE = "credentials.json"
TRACKING_DB = "mlflow.db"
AUTH_DB = "auth.db"
AUTH_CONFIG_FILE = "basic-auth.ini"
ARTIFACTS = "artifacts"
SERVER_LOG = "server.log"
#: The accounts ``exec --user`` hands out; the admin's stays in the credentials file.
USERS = ("pipeline", "reader")
#: Where their user names come from: compose's .env.example (``MLFLOW_<USER>_USERNAME``); the admin's is the auth
#: config's.
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
#: The one-shot of docker-compose.yaml (``COMPOSE_FILE``) whose grants the embedded server runs, with compose's
#: MLflow auth config.
AUTH_INIT_SERVICE = "mlflow-auth-init"
#: The ``make`` setting that passes ``--external-ok`` (named in the refusal).
EXTERNAL_OK_SETTING = "MLFLOW_EXTERNAL=1"
#: Files only the owner may read (0600), tightened on every start with the root and the artifacts (0700): a root
#: of an older version had them 0644 and 0755. SQLite's journals (``-wal``, ``-shm``, ``-journal``) are made so too.
PRIVATE_FILES = (TRACKING_DB, AUTH_DB, CREDENTIALS_FILE, AUTH_CONFIG_FILE, SERVER_LOG, PID_FILE)
PRIVATE_UMASK = 0o077
#: MLflow's switch for its server's job runner, off (compose's MLflow sets it too).
JOB_EXECUTION_SETTING = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host`` (a wildcard address is reached on loopback)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def _private(path: str, flags: int) -> int:
    """An ``open`` opener that creates the file its owner's only (0600) from its first byte."""
    return os.open(path, flags, 0o600)


def load_credentials(root: Path) -> dict[str, Account]:
    """The accounts of the server started from ``root`` (``admin``, ``pipeline``, ``reader``)."""
    raw = json.loads((root / CREDENTIALS_FILE).read_text())
    return {name: Account(raw[name]["username"], raw[name]["password"]) for name in ("admin", *USERS)}


def account(root: Path, name: str) -> Account:
    """One account of the server started from ``root``: ``pipeline`` or ``reader`` (or ``admin``)."""
    return load_credentials(root)[name]


def ensure_credentials(root: Path, admin_username: str) -> dict[str, str]:
    """The credentials file, generated the first time with random passwords (and the UI's session key), written
    0600 from its first byte. A user database left without it (its file deleted) holds passwords nobody knows:
    it is started afresh, and the one-shot creates the users again."""
    path = root / CREDENTIALS_FILE
    if path.exists():
        return dict(json.loads(path.read_text())["server"])
    usernames = {"admin": admin_username, **compose_usernames()}
    raw = {
        **{
            name: {"username": user, "password": secrets.token_urlsafe(24)}
            for name, user in usernames.items()
        },
        "server": {"flask_secret_key": secrets.token_urlsafe(32)},
    }
    if (root / AUTH_DB).exists():
        log.warning("%s has no %s: its MLflow users are created again", root / AUTH_DB, CREDENTIALS_FILE)
        for stale in root.glob(f"{AUTH_DB}*"):
            stale.unlink()
    with replacing(path) as partial, open(partial, "x", opener=_private) as out:
        json.dump(raw, out, indent=1)
    log.info("MLflow accounts generated in %s (admin, pipeline, reader)", path)
    return dict(raw["server"])


def compose_usernames() -> dict[str, str]:
    """The pipeline's and the reader's user names as compose's .env.example names them."""
    from dotenv import dotenv_values

    example = dotenv_values(ENV_EXAMPLE)
    return {name: str(example[f"MLFLOW_{name.upper()}_USERNAME"]) for name in USERS}


def write_auth_config(root: Path) -> configparser.SectionProxy:
    """compose's auth config with its user database in SQLite under ``root``; returns its ``[mlflow]`` section."""
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / "compose" / "mlflow-basic-auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{root / AUTH_DB}"
    with open(root / AUTH_CONFIG_FILE, "w", opener=_private) as out:
        config.write(out)
    return config["mlflow"]


def tighten(root: Path) -> None:
    """Make the root, the databases, the credentials and the artifacts the owner's only (folders 0700, files
    0600), whatever an older version left: the server's files are created so under its umask from then on."""
    root.chmod(0o700)
    for name in PRIVATE_FILES:
        for path in root.glob(f"{name}*"):  # SQLite's -wal, -shm and -journal beside its database
            if path.is_file():
                path.chmod(0o600)
    (root / ARTIFACTS).mkdir(mode=0o700, exist_ok=True)
    (root / ARTIFACTS).chmod(0o700)


def start(root: Path, port: int, host: str = "127.0.0.1", timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start a tracking server with the basic-auth app in the background, create its users and grants, and return
    once it answers and they exist."""
    root = root.resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth = write_auth_config(root)
    server = ensure_credentials(root, auth["admin_username"])
    admin = account(root, "admin")
    tighten(root)
    url = local_url(host, port)
    command = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--backend-store-uri", f"sqlite:///{root / TRACKING_DB}",
        "--artifacts-destination", str(root / ARTIFACTS),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(root / AUTH_CONFIG_FILE),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,  # read when the user database is created
        "MLFLOW_FLASK_SERVER_SECRET_KEY": server["flask_secret_key"],
        # MLflow's job runner (GenAI evaluation jobs, trace roll-ups, which the platform does not use) polls its
        # queues from seven worker processes that burn about a core and a half while the server is idle.
        JOB_EXECUTION_SETTING: "false",
    }
    with open(root / SERVER_LOG, "ab", opener=_private) as server_log:
        process = subprocess.Popen(
            command, stdout=server_log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True,
            umask=PRIVATE_UMASK,
        )  # fmt: skip
    with replacing(root / PID_FILE) as partial, open(partial, "w", opener=_private) as pid_file:
        pid_file.write(str(process.pid))  # a reader never sees an empty pid file
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if process.poll() is not None:
            raise RuntimeError(f"MLflow server exited with {process.returncode}; see {root / SERVER_LOG}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(
                f"MLflow server not healthy at {url} after {timeout_s}s; see {root / SERVER_LOG}"
            )
        time.sleep(0.5)
    try:
        create_users_and_grants(root, url)
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)
        raise
    return process


def create_users_and_grants(root: Path, url: str) -> None:
    """Run compose's one-shot (``mlflow-auth-init``'s command: every model's grants) as the admin,
    with the accounts of the credentials file. Idempotent: it runs on every start."""
    accounts = load_credentials(root)
    init = yaml.safe_load(COMPOSE_FILE.read_text())["services"][AUTH_INIT_SERVICE]
    env = {
        **os.environ,
        # The one-shot reads the model files (mlops.models) for each model's experiment and registered model.
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")]),
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_TRACKING_USERNAME": accounts["admin"].username,
        "MLFLOW_TRACKING_PASSWORD": accounts["admin"].password,
        **{
            f"MLFLOW_{name.upper()}_{key.upper()}": getattr(accounts[name], key)
            for name in USERS
            for key in ("username", "password")
        },
    }
    entrypoint = [sys.executable if part == "python" else part for part in init["entrypoint"]]
    with open(root / SERVER_LOG, "ab", opener=_private) as server_log:
        done = subprocess.run(
            [*entrypoint, *init["command"]], cwd=PROJECT_ROOT, env=env, stdout=server_log,
            stderr=subprocess.STDOUT, timeout=300, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"creating MLflow's users failed ({done.returncode}); see {root / SERVER_LOG}")


def credentials_env(root: Path, port: int, *, user: str | None, airflow_connection: bool) -> dict[str, str]:
    """The environment that hands a command accounts of the server started from ``root``: ``user``'s as
    ``MLFLOW_TRACKING_USERNAME`` and ``_PASSWORD`` (for its own MLflow client), and with ``airflow_connection``
    the pipeline's as the Airflow connection of ``registry.credentials.connection_id`` in platform.yaml (what the
    local pod runtime hands the stages)."""
    env: dict[str, str] = {}
    if user is not None:
        chosen = account(root, user)
        env.update(MLFLOW_TRACKING_USERNAME=chosen.username, MLFLOW_TRACKING_PASSWORD=chosen.password)
    if airflow_connection:
        from mlops.platform_config import load_platform

        pipeline = account(root, "pipeline")
        connection_id = load_platform().registry.credentials.connection_id
        env[f"AIRFLOW_CONN_{connection_id.upper()}"] = json.dumps(
            {
                "conn_type": "http",
                "schema": "http",
                "host": "127.0.0.1",
                "port": port,
                "login": pipeline.username,
                "password": pipeline.password,
            }
        )
    return env


def exec_with_credentials(
    root: Path, port: int, command: list[str], *, user: str | None, airflow_connection: bool
) -> NoReturn:
    """Replace this process with ``command``, given the accounts of the server started from ``root`` when that
    server is what answers on ``port`` (an external one, ``MLFLOW_EXTERNAL=1``, gets none of them)."""
    env = dict(os.environ)
    if started_here(root.resolve(), port):
        env.update(credentials_env(root, port, user=user, airflow_connection=airflow_connection))
    else:
        log.warning("port %s is not the MLflow started from %s: no accounts of it are given", port, root)
    os.execvpe(command[0], command, env)


def started_here(root: Path, port: int) -> bool:
    """Whether what listens on ``port`` is the server ``start`` launched from ``root``: a process of the session
    whose leader is the pid in its pid file (the server's workers are that process's children)."""
    try:
        leader = psutil.Process(int((root / PID_FILE).read_text()))
        processes = [leader, *leader.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return False
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in process.net_connections("tcp")
            ):
                return True
    return False


def stop(root: Path) -> None:
    pid_file = root / PID_FILE
    if not pid_file.exists():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "exec"])
    parser.add_argument("--root", type=Path, default=Path(".local/mlflow"))
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument(
        "--external-ok",
        action="store_true",
        help="use a server already answering on the port that is not ours",
    )
    parser.add_argument(
        "--user", choices=USERS, help="exec: the account of the command's MLflow client (MLFLOW_TRACKING_*)"
    )
    parser.add_argument(
        "--airflow-connection",
        action="store_true",
        help="exec: the pipeline's account as the Airflow connection of platform.yaml (for the stages)",
    )
    argv = sys.argv[1:]
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if (args.action == "exec") != bool(command):
        parser.error("exec, and only exec, runs a command: exec [options] -- COMMAND [ARGS...]")
    if args.action == "exec":
        exec_with_credentials(
            args.root, args.port, command, user=args.user, airflow_connection=args.airflow_connection
        )
    if args.action == "stop":
        stop(args.root)
        return
    url = local_url(args.host, args.port)
    if healthy(url):
        if started_here(args.root.resolve(), args.port):
            log.info("MLflow already running at %s", url)
            return
        if not args.external_ok:
            sys.exit(
                f"port {args.port} answers but is not the MLflow this project started (pid file "
                f"{args.root / PID_FILE}); stop it, or set {EXTERNAL_OK_SETTING} (--external-ok) to use it"
            )
        log.warning("Using the MLflow server already answering at %s (not started by this project)", url)
        return
    start(args.root, args.port, args.host)
    log.info(
        "MLflow running at %s (data in %s; users and passwords in %s)",
        url,
        args.root,
        args.root / CREDENTIALS_FILE,
    )


if __name__ == "__main__":
    main()
