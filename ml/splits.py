"""The published splits, read a piece at a time: a row group of a split's Parquet file (local or S3), or a frame.

``ml.prepare`` writes each split a row group per batch it read, so a training split of any size is a sequence of
pieces of bounded size: the train stage encodes and hands XGBoost one piece at a time (``ml.train``), and the Dask
workers read theirs (``ml.distributed``). Frames already in memory (tests, the benchmarks) go through the same
code as one piece each.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml.errors import StageError
from ml.storage import S3_MAX_ATTEMPTS, is_remote, split_s3

#: Reads a piece, only the given columns (None: all).
Loader = Callable[[Sequence[str] | None], pd.DataFrame]


class Pieces:
    """The rows of one or more splits, a piece at a time, always in the same order."""

    def __init__(self, loaders: Sequence[Loader], rows: int) -> None:
        self.loaders, self.rows = list(loaders), rows

    @classmethod
    def of(cls, *frames: pd.DataFrame) -> Pieces:
        """Frames in memory, a piece each."""
        return cls([_frame_loader(frame) for frame in frames], sum(len(frame) for frame in frames))

    @classmethod
    def published(cls, prepared_uri: str, name: str) -> Pieces:
        """The row groups of the split ``name`` (``train``, ...) that ``ml.prepare`` published at ``prepared_uri``."""
        groups = row_groups(prepared_uri, name)
        split = _SplitFile(prepared_uri, name)
        return cls([functools.partial(split.read, group) for group in range(len(groups))], sum(groups))

    def __add__(self, other: Pieces) -> Pieces:
        return Pieces(self.loaders + other.loaders, self.rows + other.rows)

    def __len__(self) -> int:
        return self.rows

    def frames(self, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """Each piece in turn (only ``columns``, when given)."""
        for load in self.loaders:
            yield load(columns)

    def column(self, name: str) -> np.ndarray:
        """One column of every row, in order."""
        parts = [frame[name].to_numpy() for frame in self.frames([name])]
        return np.concatenate(parts) if parts else np.empty(0)

    def head(self, rows: int) -> pd.DataFrame:
        """The first ``rows`` rows (from the first piece)."""
        return next(self.frames()).head(rows)

    def frame(self) -> pd.DataFrame:
        """Every row in one frame: for what needs them all at once (the random forest baseline)."""
        return pd.concat(list(self.frames()), ignore_index=True)


def _frame_loader(frame: pd.DataFrame) -> Loader:
    def load(columns: Sequence[str] | None) -> pd.DataFrame:
        return frame if columns is None else frame[list(columns)]

    return load


class _SplitFile:
    """A published split's Parquet file, opened on the first read and kept open: its footer is parsed once, not
    once a row group and a pass (on S3, a request each)."""

    def __init__(self, prepared_uri: str, name: str) -> None:
        self.prepared_uri, self.name = prepared_uri, name
        self.parquet: Any = None

    def read(self, group: int, columns: Sequence[str] | None) -> pd.DataFrame:
        import pyarrow.parquet as pq

        if self.parquet is None:
            source = filesystem(self.prepared_uri).open_input_file(split_path(self.prepared_uri, self.name))
            self.parquet = pq.ParquetFile(source)
        return self.parquet.read_row_group(
            group, columns=None if columns is None else list(columns)
        ).to_pandas()


def row_groups(prepared_uri: str, name: str) -> list[int]:
    """The rows of each row group of a published split.

    Raises:
        StageError: when the split's file is missing, not Parquet, or has no rows (the folder's fault); an S3
            that does not answer is not (``ml.faults``: transient).
    """
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(split_path(prepared_uri, name), filesystem=filesystem(prepared_uri))
    except FileNotFoundError as err:
        raise StageError(
            f"'{prepared_uri}' has a manifest but no {name}.parquet: the folder was changed after publishing"
        ) from err
    except (TimeoutError, ConnectionError):
        raise
    except (ValueError, OSError) as err:  # Arrow's "not Parquet" is a ValueError
        if isinstance(err, OSError) and is_remote(prepared_uri):
            raise  # Arrow's S3 errors are OSErrors: an unanswered request is no verdict on the folder
        raise StageError(f"{name}.parquet in '{prepared_uri}' is not a readable Parquet file: {err}") from err
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    if not sum(groups):
        raise StageError(f"{name}.parquet in '{prepared_uri}' has no rows")
    return groups


def split_path(prepared_uri: str, name: str) -> str:
    """The split's path on its ``filesystem``."""
    if is_remote(prepared_uri):
        bucket, prefix = split_s3(prepared_uri.rstrip("/") + "/")
        return f"{bucket}/{prefix}{name}.parquet"
    return os.path.abspath(os.path.join(prepared_uri, f"{name}.parquet"))


def filesystem(uri: str) -> Any:
    """Arrow's file system for ``uri``: S3 as ``ml.storage`` reaches it with boto3 (the endpoint of
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, MinIO's for instance, and the retries; Arrow reads the
    credentials and the region from the environment itself), else the local disk."""
    from pyarrow import fs

    if not is_remote(uri):
        return fs.LocalFileSystem()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS))
    return fs.S3FileSystem(
        endpoint_override=endpoint, retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=attempts)
    )
