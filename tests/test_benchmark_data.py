"""The benchmarks' real table is the public one, unmodified, and reads as the quality benchmark reads it."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from benchmarks.bench_quality import ADULT, ADULT_COLUMNS, adult_table

#: sha256 of the UCI Adult table as published (benchmarks/data/README.md).
ADULT_SHA256 = "9146fc02f429353b2e64ba223f09f4de076bb02df3a335d32180ca970c12ba46"


def test_the_adult_table_is_the_published_file_unmodified() -> None:
    assert hashlib.sha256(gzip.decompress(ADULT.read_bytes())).hexdigest() == ADULT_SHA256


def test_the_quality_benchmark_reads_every_row_with_its_columns(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.read_parquet(adult_table(tmp_path))
    assert list(frame.columns) == ADULT_COLUMNS
    assert len(frame) == 32_561
    assert frame["income"].value_counts().to_dict() == {"<=50K": 24_720, ">50K": 7_841}
