"""A Helm release history kept in files, for the local pod runtime (no cluster to keep it in Secrets).

Like Helm's own storage: every upgrade or rollback is a new numbered revision holding the user-supplied values
and the rendered objects; exactly one revision is ``deployed``, older ones are ``superseded``. A rollback copies
an older revision's values and objects into a new revision. Writes are atomic and serialised by a file lock.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract import write_json
from ml.release.helm import DEPLOYED, SUPERSEDED, Revision, deployed


class ReleaseStore:
    """The revisions of one release under ``root/<release>/revisions``."""

    def __init__(self, root: Path, release: str) -> None:
        self.release = release
        self.path = Path(root) / release
        self.revisions_dir = self.path / "revisions"

    def history(self) -> list[Revision]:
        if not self.revisions_dir.exists():
            return []
        revisions = [self._read(path) for path in self.revisions_dir.glob("*.json")]
        return sorted(revisions, key=lambda r: r.revision)

    def get(self, number: int) -> Revision | None:
        path = self.revisions_dir / f"{number}.json"
        return self._read(path) if path.exists() else None

    def deployed(self) -> Revision | None:
        return deployed(self.history())

    def record(self, values: dict[str, Any], objects: list[dict[str, Any]], description: str) -> Revision:
        """Add a new deployed revision and supersede the one deployed before it."""
        with self._locked():
            history = self.history()
            number = history[-1].revision + 1 if history else 1
            for previous in history:
                if previous.status == DEPLOYED:
                    previous.status = SUPERSEDED
                    self._write(previous)
            revision = Revision(
                revision=number,
                status=DEPLOYED,
                description=description,
                values=values,
                objects=objects,
                updated=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._write(revision)
            return revision

    def prune(self, keep: int) -> None:
        """Delete the oldest superseded revisions beyond ``keep``, as Helm's ``--history-max`` does."""
        if keep <= 0:
            return
        with self._locked():
            history = self.history()
            for old in history[: max(0, len(history) - keep)]:
                if old.status != DEPLOYED:
                    (self.revisions_dir / f"{old.revision}.json").unlink(missing_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.revisions_dir.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, path: Path) -> Revision:
        return Revision(**json.loads(path.read_text()))

    def _write(self, revision: Revision) -> None:
        write_json(self.revisions_dir / f"{revision.revision}.json", asdict(revision))
