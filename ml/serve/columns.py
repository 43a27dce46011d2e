"""Validating and encoding a request that arrives by column: columnar JSON, an Arrow stream, tensors.

Each column is checked as a whole, with the rules and the words of the record path (``ml.serve.service``): a
number field takes integers and floats (not booleans, not text) or null, never NaN or infinity; a category takes
text or null; every feature is needed and nothing else is taken. A problem names its place as the request's
shape names it (``data[3].amount``, ``amount[3]``, ``inputs.amount``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ml.serve.model import Scorer
from ml.serve.service import Problem

#: pydantic's words for the record path's errors, so that a client reads the same whatever shape it sends.
REQUIRED = "Field required"
EXTRA = "Extra inputs are not permitted"
NUMBER = "Input should be a valid number"
FINITE = "Input should be a finite number"
TEXT = "Input should be a valid string"
#: At most this many problems are listed; the rest are counted.
SHOWN = 10

#: Names a column's place in the request (``where(column, None)``) or a value's (``where(column, row)``).
Place = Callable[[str, int | None], str]


def check_names(names: Sequence[str], scorer: Scorer, where: Place) -> None:
    """Every feature once, and nothing else, or a 422 naming each one missing, extra or repeated."""
    problems = [f"{where(name, None)}: {REQUIRED}" for name in scorer.features if name not in names]
    problems += [
        f"{where(name, None)}: {EXTRA}" for name in dict.fromkeys(names) if name not in scorer.features
    ]
    problems += [f"{where(name, None)}: given more than once" for name in dict.fromkeys(names)
                 if names.count(name) > 1]  # fmt: skip
    if problems:
        raise Problem(422, listed(problems))


def check_rows(rows: int, limit: int, what: str) -> None:
    if rows == 0:
        raise Problem(422, f"{what}: the batch is empty")
    if rows > limit:
        raise Problem(422, f"{what}: {rows} records is over the limit of {limit}")


def listed(problems: list[str]) -> str:
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


def json_matrix(scorer: Scorer, columns: Mapping[str, Sequence[Any]], rows: int, where: Place) -> np.ndarray:
    """The model's matrix of columns of JSON values (lists of one length, one per feature, checked by
    ``check_names``), or a 422 naming the values that break the record path's rules."""
    matrix = np.empty((rows, len(scorer.features)), dtype=np.float32)
    problems: list[str] = []
    for position, name in enumerate(scorer.features):
        values = columns[name]
        if name in scorer.categories:
            bad = [row for row, value in enumerate(values) if value is not None and type(value) is not str]
            problems += [f"{where(name, row)}: {TEXT}" for row in bad[:SHOWN]]
            if not bad:
                matrix[:, position] = scorer.codes(name, values)
            continue
        kinds = set(map(type, values))
        if kinds <= {int, float, type(None)}:
            numbers = np.array(values, dtype=np.float64)  # None becomes NaN: missing
            infinite = np.flatnonzero(np.isinf(numbers))
            problems += [f"{where(name, int(row))}: {FINITE}" for row in infinite[:SHOWN]]
            matrix[:, position] = numbers
            continue
        bad = [row for row, value in enumerate(values)
               if value is not None and (type(value) not in (int, float) or not math.isfinite(value))]  # fmt: skip
        problems += [f"{where(name, row)}: {NUMBER}" for row in bad[:SHOWN]]
    if problems:
        raise Problem(422, listed(problems))
    return matrix


def arrow_matrix(scorer: Scorer, table: Any, where: Place) -> np.ndarray:
    """The model's matrix of an Arrow table whose columns are the features (checked by ``check_names``): numbers
    of an integer or floating type, categories as text (or a dictionary of text); nulls are missing values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    matrix = np.empty((table.num_rows, len(scorer.features)), dtype=np.float32)
    problems: list[str] = []
    for position, name in enumerate(scorer.features):
        column = table.column(name)
        kind = column.type
        if name in scorer.categories:
            if pa.types.is_dictionary(kind):
                column, kind = column.cast(kind.value_type), kind.value_type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                problems.append(f"{where(name, None)}: {TEXT} (the column is {kind})")
                continue
            known = pc.index_in(column, value_set=scorer.category_array(name))  # null: unknown or missing
            matrix[:, position] = known.to_numpy(zero_copy_only=False)
            continue
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            problems.append(f"{where(name, None)}: {NUMBER} (the column is {kind})")
            continue
        numbers = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        if pa.types.is_floating(kind):
            # A NaN sent as a value is not a null: the record path has no NaN, and neither has this one.
            broken = np.flatnonzero(~np.isfinite(numbers) & column.is_valid().to_numpy(zero_copy_only=False))
            problems += [f"{where(name, int(row))}: {FINITE}" for row in broken[:SHOWN]]
        matrix[:, position] = numbers
    if problems:
        raise Problem(422, listed(problems))
    return matrix
