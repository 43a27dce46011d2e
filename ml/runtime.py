"""What every stage's entrypoint shares: logging, the XCom result and the exit codes of the contract."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from contract import ERROR_PREFIX, EXIT_INVALID_INPUT, EXIT_TRANSIENT, HAND_RUN_XCOM_DIR, write_xcom_result
from ml import faults
from ml.errors import StageError

log = logging.getLogger(__name__)


def configure_logging() -> None:
    """Log to stdout in a format that reads well in the Airflow task log."""
    logging.basicConfig(
        level=os.environ.get("ML_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    # MLflow and urllib3 are chatty at INFO about things the task log does not need.
    for noisy in ("urllib3", "botocore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with each optional flag's default (when it has one worth showing) and the module docstring's
    examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], "", argparse.SUPPRESS)
        if shown and action.option_strings and not action.required and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a missing or malformed flag) are a ``StageError``: the stage's one "ERROR:" line
    and exit code 2, like any other input it rejects, instead of argparse's usage text. ``doc`` (the stage module's
    docstring) gives the description (its first paragraph) and the epilog (the rest: what it does, its examples)."""

    def __init__(self, *args: Any, doc: str | None = None, **kwargs: Any) -> None:
        if doc:
            first, _, rest = textwrap.dedent(doc).strip().partition("\n\n")
            kwargs.setdefault("description", " ".join(first.split()))
            kwargs.setdefault("epilog", rest.strip("\n") or None)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise StageError(f"{self.prog}: {message}")


def json_object(flag: str, what: str) -> Callable[[str], dict[str, Any]]:
    """An argparse ``type=`` for a flag that takes a JSON object (another stage's result), or a StageError."""

    def parse(value: str) -> dict[str, Any]:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise StageError(f"{flag} is not valid JSON: {err}") from err
        except RecursionError as err:
            raise StageError(f"{flag} is nested too deeply to be {what}") from err
        if not isinstance(parsed, dict):
            raise StageError(f"{flag} must be a JSON object ({what})")
        return parsed

    return parse


def boolean(value: str) -> bool:
    """An argparse ``type=`` for ``true``/``false`` (any case, as a form's boolean is rendered)."""
    if value.strip().lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.strip().lower() == "true"


def non_negative_int(value: str) -> int:
    """An argparse ``type=`` for counts and seeds."""
    try:
        number = int(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from err
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number from ``low`` to ``high``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from err
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {number}")
        return number

    return parse


def check_tracking_uri() -> None:
    """Refuse credentials inside ``MLFLOW_TRACKING_URI``: MLflow prints the URI in its "View run" lines and
    Airflow keeps it in the task's rendered fields. They belong in ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``), which neither shows."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    parsed = urlsplit(uri)
    if parsed.scheme in ("http", "https") and (parsed.username or parsed.password):
        raise StageError(
            "MLFLOW_TRACKING_URI carries credentials: give the server's address alone and the credentials in "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN "
            f"(server {parsed.hostname}:{parsed.port or ''})"
        )


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a killed task, a deleted pod): end the stage's MLflow run as KILLED and exit at once.

    Not an exception raised into the stage: the signal may land inside a native callback (XGBoost calls back
    into Python for its data), where an exception is lost and the process crashes instead. A staging folder
    the stage was writing stays behind, unpublished, and the next attempt removes it.
    """
    reason = f"stopped by {signal.Signals(signum).name}"
    log.warning("%s: ending the stage", reason)
    tracking = sys.modules.get("ml.tracking")
    if tracking is not None and "mlflow" in sys.modules:  # only a stage that used MLflow has a run to end
        tracking.end_active_run("KILLED", reason)
    logging.shutdown()
    os._exit(128 + signum)


def _exit_on(err: BaseException) -> NoReturn:
    """Report an error that ended the stage as one "ERROR:" line and the contract's exit code."""
    kind = faults.classify(err)
    if kind == faults.UNKNOWN:
        raise err  # a crash: its traceback reaches the task log (exit 1, retried)
    if kind == faults.TRANSIENT:
        log.error("a service the stage needs is unavailable", exc_info=err)
        message, code = f"temporarily unavailable, retry later: {err}", EXIT_TRANSIENT
    else:
        message, code = str(err), EXIT_INVALID_INPUT
    # One line that starts with "ERROR: ": the local runtime and the pod's termination message surface it.
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr, flush=True)  # noqa: T201 - the stage's contract
    termination_log = Path("/dev/termination-log")
    if termination_log.exists():  # mounted by the kubelet in a pod; absent elsewhere
        termination_log.write_text(message[:4000])
    sys.exit(code)


def run_stage(
    main: Callable[[Sequence[str] | None], dict[str, Any]], argv: Sequence[str] | None = None
) -> None:
    """Run a stage's main, write its result and exit by the contract: 0 on success, 2 on rejected input,
    75 when a service stayed unavailable; a crash propagates with its traceback (exit 1).

    SIGTERM (a killed task or a deleted pod) ends the stage's MLflow run as KILLED before the process exits.
    """
    configure_logging()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_tracking_uri()
        result = main(argv)
    except Exception as err:
        _exit_on(err)
    written = write_xcom_result(result)
    log.info("result: %s", json.dumps(result, default=str))
    if written.parent == HAND_RUN_XCOM_DIR:  # run by hand: say where the result went
        log.info("result written to %s", written.resolve())
