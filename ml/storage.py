"""Publishing stage outputs on local disk or S3, with all-or-nothing semantics.

A published folder is complete only when its ``manifest.json`` exists: the manifest is written last, and on
local disk the whole folder appears with one rename. Readers refuse a folder without a manifest, so a crash
half-way through never leaves output that looks complete.

``publish_folder`` replaces what is at a path (a hand run's output); ``publish_by_content`` publishes immutably
under a prefix, in a folder named by the content's digest (the pipeline's prepared data, which model versions and
canaries point at): what was published there never changes afterwards.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from ml.errors import StageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: A staging folder of another output left this long is taken to be a killed attempt's, and removed.
STALE_STAGING_SECONDS = 24 * 3600
SYNTHETIC_SCHEME = "synthetic"


#: botocore's retries of throttling (503 SlowDown), 5xx, timeouts and connection errors, unless the environment
#: sets its own (``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS``): "standard" backs off exponentially with jitter.
S3_RETRY_MODE = "standard"
S3_MAX_ATTEMPTS = 8


def s3_client() -> Any:
    """A boto3 S3 client; boto3 reads AWS_ENDPOINT_URL itself, so MinIO works without code changes."""
    import os

    import boto3  # imported lazily: local runs never need it
    from botocore.config import Config

    retries = {
        "mode": os.environ.get("AWS_RETRY_MODE", S3_RETRY_MODE),
        "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS)),
    }
    return boto3.client("s3", config=Config(retries=retries))  # type: ignore[arg-type]


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://`` URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def table_format(uri: str) -> str:
    """Return ``parquet`` or ``csv`` from a URI's suffix (``.csv.gz`` counts as CSV)."""
    path = urlparse(uri).path.lower()
    if path.endswith((".parquet", ".pq")) or path.endswith("/"):
        return "parquet"
    if path.endswith((".csv", ".csv.gz", ".csv.zst")):
        return "csv"
    raise StageError(f"cannot tell the format of '{uri}': use a .csv, .csv.gz or .parquet path")


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme == "s3"


@contextmanager
def publish_folder(uri: str) -> Iterator[Path]:
    """Yield an empty local folder; on success, make its content the complete output at ``uri``.

    The folder must contain ``manifest.json``. On local disk the previous output is replaced with renames, so
    the target is either the old complete output, absent for an instant, or the new complete output. On S3 the
    old manifest is deleted first, the new objects uploaded, the manifest uploaded last and stale keys removed.
    On any error nothing at ``uri`` is touched (local) or the output is left without a manifest (S3).
    """
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="publish-") as local_staging:
            yield Path(local_staging)
            _publish_s3(Path(local_staging), uri)
        return

    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if not (staging / MANIFEST).exists():
            raise RuntimeError(f"refusing to publish {uri}: no {MANIFEST} was written")
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


#: Hex digits of the content's SHA-256 that name a folder ``publish_by_content`` publishes (64 bits: no two
#: outputs under one prefix share them by chance).
CONTENT_KEY_DIGITS = 16


@dataclass
class Publication:
    """A folder being published by content: write into ``staging`` and set ``key`` (the content's digest) before
    the block ends; ``uri`` then says where it is published."""

    prefix: str
    staging: Path
    key: str = ""

    @property
    def uri(self) -> str:
        if not self.key:
            raise RuntimeError(f"no content key was set for the output under {self.prefix}")
        return f"{self.prefix.rstrip('/')}/{self.key[:CONTENT_KEY_DIGITS]}"


@contextmanager
def publish_by_content(prefix: str) -> Iterator[Publication]:
    """Yield a ``Publication`` to fill; on success publish it, immutably, at ``<prefix>/<key>``.

    Published data never changes afterwards: model versions record the folder they learnt from, and the local
    canary replays it. The same content again (a retry that read the same rows) finds its folder complete and
    leaves it as it is; other content (another run, or a retry after the source changed) gets a folder of its own.
    The folder appears whole (local disk: one rename) or with its manifest last (S3); on any error nothing at
    ``prefix`` is touched. One publisher of a prefix at a time (the prefix names a run): leftovers of a killed
    attempt are removed at the start.
    """
    if is_remote(prefix):
        with tempfile.TemporaryDirectory(prefix="publish-") as local_staging:
            publication = Publication(prefix, Path(local_staging))
            yield publication
            _require_manifest(publication)
            bucket, key = split_s3(publication.uri.rstrip("/") + "/")
            if _s3_exists(bucket, key + MANIFEST):
                log.info("%s is already published (the same content): left as it is", publication.uri)
                return
            _publish_s3(publication.staging, publication.uri)
        return

    folder = Path(prefix)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder / CONTENT_STAGING)
    publication = Publication(prefix, folder / f".{CONTENT_STAGING}.partial-{uuid.uuid4().hex[:8]}")
    publication.staging.mkdir()
    try:
        yield publication
        _require_manifest(publication)
        target = Path(publication.uri)
        if (target / MANIFEST).exists():
            log.info("%s is already published (the same content): left as it is", target)
            return
        shutil.rmtree(target, ignore_errors=True)  # never complete (no manifest), so nothing points at it
        publication.staging.rename(target)
    finally:
        shutil.rmtree(publication.staging, ignore_errors=True)


#: The name ``publish_by_content``'s staging folders carry under their prefix.
CONTENT_STAGING = "content"


def _require_manifest(publication: Publication) -> None:
    if not (publication.staging / MANIFEST).exists():
        raise RuntimeError(f"refusing to publish under {publication.prefix}: no {MANIFEST} was written")


def _s3_exists(bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def remove_stale_staging(target: Path, *, now: float | None = None) -> list[Path]:
    """Remove what killed publishers left beside ``target``: its own staging and retired folders (one attempt of
    a task publishes a given output at a time, so any found now belong to an attempt that died), and any other
    output's that are older than ``STALE_STAGING_SECONDS``. Returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for leftover in target.parent.glob(".*.partial-*"):
        own = leftover.name.startswith(f".{target.name}.partial-")
        try:
            stale = own or now - leftover.stat().st_mtime > STALE_STAGING_SECONDS
        except FileNotFoundError:  # another output's publisher renamed it meanwhile
            continue
        if stale:
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    for leftover in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    if removed:
        log.info(
            "removed %d staging folder(s) left by killed attempts: %s",
            len(removed),
            [p.name for p in removed],
        )
    return removed


def _publish_s3(staging: Path, uri: str) -> None:
    bucket, prefix = split_s3(uri.rstrip("/") + "/")
    client = s3_client()
    client.delete_object(Bucket=bucket, Key=prefix + MANIFEST)
    uploaded = set()
    for path in sorted(staging.iterdir()):
        if path.name != MANIFEST:
            client.upload_file(str(path), bucket, prefix + path.name)
            uploaded.add(prefix + path.name)
    client.upload_file(str(staging / MANIFEST), bucket, prefix + MANIFEST)
    uploaded.add(prefix + MANIFEST)
    listing = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    stale = [obj["Key"] for page in listing for obj in page.get("Contents", []) if obj["Key"] not in uploaded]
    for key in stale:
        client.delete_object(Bucket=bucket, Key=key)


def read_manifest(uri: str) -> dict[str, Any]:
    """Read a published folder's manifest, refusing a folder that was never completed."""
    try:
        if is_remote(uri):
            bucket, prefix = split_s3(uri.rstrip("/") + "/")
            body = s3_client().get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
            return dict(json.loads(body))
        return dict(json.loads((Path(uri) / MANIFEST).read_text()))
    except FileNotFoundError as err:
        raise StageError(f"'{uri}' is not a complete output: it has no {MANIFEST}") from err
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise StageError(f"the {MANIFEST} of '{uri}' is not a JSON object: {err}") from err
    except Exception as err:
        if type(err).__name__ == "NoSuchKey":
            raise StageError(f"'{uri}' is not a complete output: it has no {MANIFEST}") from err
        raise


def read_published_table(uri: str, name: str) -> pd.DataFrame:
    """Read one Parquet file of a published folder; a missing or unreadable file is the folder's fault."""
    import pyarrow as pa

    try:
        if is_remote(uri):
            bucket, prefix = split_s3(uri.rstrip("/") + "/")
            body = s3_client().get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
            return pd.read_parquet(io.BytesIO(body))
        return pd.read_parquet(Path(uri) / name)
    except FileNotFoundError as err:
        raise StageError(
            f"'{uri}' has a {MANIFEST} but no {name}: the folder was changed after publishing"
        ) from err
    except (TimeoutError, ConnectionError):
        raise  # a network file system that did not answer: transient (ml.faults), not the folder's fault
    except (pa.ArrowException, OSError, ValueError) as err:
        raise StageError(f"{name} in '{uri}' is not a readable Parquet file: {err}") from err
