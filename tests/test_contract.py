"""The contract's helpers: a result or record appears whole or not at all."""

from __future__ import annotations

import json
import os
import time

import pytest

from contract import (
    ABANDONED_PARTIAL_SECONDS,
    XCOM_DIR_ENV,
    XCOM_RESULT_FILE,
    replacing,
    write_json,
    write_xcom_result,
)


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path) -> None:
    target = tmp_path / "report.md"
    target.write_text("before")
    with pytest.raises(RuntimeError), replacing(target) as partial:
        partial.write_text("half a rep")
        raise RuntimeError("crashed mid-write")
    assert target.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_json_and_the_xcom_result_are_written_whole(tmp_path, monkeypatch) -> None:
    write_json(tmp_path / "deep" / "record.json", {"revision": 3})
    assert json.loads((tmp_path / "deep" / "record.json").read_text()) == {"revision": 3}
    monkeypatch.setenv(XCOM_DIR_ENV, str(tmp_path / "xcom"))
    path = write_xcom_result({"prepared_uri": "s3://b/p"})
    assert path == tmp_path / "xcom" / XCOM_RESULT_FILE
    assert json.loads(path.read_text()) == {"prepared_uri": "s3://b/p"}
    assert [p.name for p in path.parent.iterdir()] == [XCOM_RESULT_FILE]


def test_what_a_killed_writer_left_is_removed_once_it_is_old_and_writers_never_share_a_name(tmp_path) -> None:
    target = tmp_path / "state.json"
    abandoned = tmp_path / ".state.json.4242-deadbeef.partial"
    in_progress = tmp_path / ".state.json.4343-cafef00d.partial"
    for partial in (abandoned, in_progress):
        partial.write_text("{")
    long_ago = time.time() - ABANDONED_PARTIAL_SECONDS - 60
    os.utime(abandoned, (long_ago, long_ago))
    with replacing(target) as first, replacing(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the last to finish wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, in_progress.name])
