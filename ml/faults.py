"""Which failures are worth retrying: a service that is busy or briefly away, or an input that will never work.

A stage's own retries live in the client libraries where they exist: botocore retries S3's throttling, 5xx and
connection errors (``storage.s3_client``: its "standard" mode, exponential backoff with jitter) and MLflow's
client retries 429 and 5xx answers (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``). The ``helm`` command has no retries of
its own: ``retry`` gives its reads some. What is still failing after those retries is classified here, once, for
the exit code of ``runtime.run_stage``:

- ``INVALID``: a deterministic refusal (not found, access denied, a malformed request): exit 2, no retry;
- ``TRANSIENT``: throttling, 5xx, timeouts, connection resets: exit 75, the orchestrator retries the task;
- ``UNKNOWN``: anything else, a crash with its traceback (exit 1, retried).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from ml.errors import StageError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

INVALID = "invalid"
TRANSIENT = "transient"
UNKNOWN = "unknown"

#: S3 error codes that mean "try again later" (AWS and MinIO spell them so), and those that never will.
S3_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "XMinioServerNotInitialized",
})  # fmt: skip
S3_INVALID_CODES = frozenset({
    "NoSuchKey", "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidBucketName", "InvalidObjectState", "ExpiredToken", "InvalidToken", "NotFound", "Forbidden",
})  # fmt: skip
#: MLflow's error codes for "try again later", and for a request that is wrong as it stands.
MLFLOW_TRANSIENT_CODES = frozenset({
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED",
})  # fmt: skip
#: (Not RESOURCE_ALREADY_EXISTS or INVALID_STATE: two writers racing end so, and a retry settles it.)
MLFLOW_INVALID_CODES = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "CUSTOMER_UNAUTHORIZED",
})  # fmt: skip
#: What ``helm`` (and the Kubernetes API or Go HTTP client behind it) prints when the cluster was busy or out of
#: reach: exact phrases, case-sensitive, so that a template or schema error that happens to say "EOF" or
#: "timeoutSeconds" stays the user's problem.
HELM_TRANSIENT = re.compile(
    "|".join([
        r"Kubernetes cluster unreachable", r"i/o timeout", r"context deadline exceeded", r"Client\.Timeout exceeded",
        r"TLS handshake timeout", r"connection refused", r"connection reset by peer", r"broken pipe", r"dial tcp",
        r"no route to host", r"http2: client connection lost", r'"https?://[^"]*": (unexpected )?EOF',
        r"the server is currently unable to handle the request", r"the server was unable to return a response",
        r"Too Many Requests", r"etcdserver: (request timed out|leader changed)", r"Internal error occurred",
    ])
)  # fmt: skip


def classify(err: BaseException) -> str:
    """``INVALID``, ``TRANSIENT`` or ``UNKNOWN`` for an exception a stage did not handle itself."""
    if isinstance(err, StageError):
        return INVALID
    if isinstance(err, TransientError | ConnectionError | TimeoutError):
        return TRANSIENT
    return _botocore(err) or _mlflow(err) or _requests(err) or UNKNOWN


def _botocore(err: BaseException) -> str | None:
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - the images carry boto3
        return None
    if isinstance(err, boto.ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in S3_TRANSIENT_CODES or status == 429 or status >= 500:
            return TRANSIENT
        if code in S3_INVALID_CODES or status in (400, 403, 404):
            return INVALID
        return None
    if isinstance(err, boto.NoCredentialsError | boto.PartialCredentialsError | boto.ParamValidationError):
        return INVALID
    transient = (boto.ConnectionError, boto.HTTPClientError, boto.ReadTimeoutError, boto.ConnectTimeoutError)
    if isinstance(err, transient):
        return TRANSIENT
    return None


def _mlflow(err: BaseException) -> str | None:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # the release stage's image path does not need MLflow's client for every check
        return None
    if not isinstance(err, MlflowException):
        return None
    if err.error_code in MLFLOW_INVALID_CODES:
        return INVALID
    # The client's HTTP layer wraps connection failures and exhausted retries as "API request to ... failed".
    if err.error_code in MLFLOW_TRANSIENT_CODES and str(err.message).startswith("API request to"):
        return TRANSIENT
    return None


def _requests(err: BaseException) -> str | None:
    try:
        import requests
    except ImportError:  # pragma: no cover - MLflow brings it
        return None
    if isinstance(err, requests.ConnectionError | requests.Timeout):
        return TRANSIENT
    return None


def retry(
    call: Callable[[], T],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    attempts: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 20.0,
) -> T:
    """``call()``, tried again after a transient failure with exponential backoff and full jitter; after the last
    attempt, the failure is raised as a ``TransientError`` naming ``what``."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if not transient(err):
                raise
            if attempt == attempts:
                raise TransientError(f"{what} still failing after {attempts} attempts: {err}") from err
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.1fs: %s", what, attempt, attempts, delay, err
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
