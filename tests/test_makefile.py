"""`make` with no target is the newcomer's map: it lists every target, each with one line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(".PHONY:")]
    return set(line.removeprefix(".PHONY:").split()) - {"help"}


def test_make_with_no_target_lists_every_target_with_what_it_does() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed = re.findall(r"^  make (\S+)\s+(\S.*)$", shown.stdout, flags=re.MULTILINE)
    names = [name for name, _ in listed]
    assert sorted(names) == sorted(phony_targets()), "each target once, and only targets"
    assert all(len(what) > 10 for _, what in listed)
