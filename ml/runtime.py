"""What every stage's entrypoint shares: logging, the XCom result and the exit codes of the contract."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contract import ERROR_PREFIX, EXIT_INVALID_INPUT, write_xcom_result
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


def json_object(flag: str, what: str) -> Callable[[str], dict[str, Any]]:
    """An argparse ``type=`` for a flag that takes a JSON object (another stage's result), or a StageError."""

    def parse(value: str) -> dict[str, Any]:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise StageError(f"{flag} is not valid JSON: {err}") from err
        if not isinstance(parsed, dict):
            raise StageError(f"{flag} must be a JSON object ({what})")
        return parsed

    return parse


def run_stage(
    main: Callable[[Sequence[str] | None], dict[str, Any]], argv: Sequence[str] | None = None
) -> None:
    """Run a stage's main, write its result and exit: 0 on success, 2 on rejected input.

    Unexpected exceptions are left to propagate so their traceback reaches the task log (exit 1).
    """
    configure_logging()
    try:
        result = main(argv)
    except StageError as err:
        # One line that starts with "ERROR: ": the local runtime and the pod's termination message surface it.
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr, flush=True)  # noqa: T201 - the stage's contract
        termination_log = Path("/dev/termination-log")
        if termination_log.exists():  # mounted by the kubelet in a pod; absent elsewhere
            termination_log.write_text(str(err))
        sys.exit(EXIT_INVALID_INPUT)
    write_xcom_result(result)
    log.info("result: %s", json.dumps(result, default=str))
