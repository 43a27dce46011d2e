"""A Helm release history kept in files, for the local pod runtime (no cluster to keep it in Secrets).

Like Helm's own storage: every upgrade or rollback is a new numbered revision holding the user-supplied values
and the rendered objects; exactly one revision is ``deployed``, older ones are ``superseded``. A rollback copies
an older revision's values and objects into a new revision. Writes are atomic (``contract.write_json``) and
serialised by a file lock, so a reader never sees half a record; a record that cannot be read all the same (edited
by hand, a full disk) is an ``UnreadableRelease`` naming the file, never a record taken for empty.
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
from ml.release.helm import DEPLOYED, SUPERSEDED, Revision, deployed, next_revision


class UnreadableRelease(ValueError):
    """A release record exists but is not one (empty, cut short, not JSON, or missing fields)."""


class ConcurrentRelease(RuntimeError):
    """Another upgrade or rollback recorded a revision while this one was being rendered."""


class ReleaseStore:
    """The revisions of one release under ``root/<release>/revisions``."""

    def __init__(self, root: Path, release: str) -> None:
        self.release = release
        self.path = Path(root) / release
        self.revisions_dir = self.path / "revisions"

    def history(self) -> list[Revision]:
        """The revisions, oldest first, as one write left them (a shared lock: never halfway through a record)."""
        if not self.revisions_dir.exists():
            return []
        with self._locked(fcntl.LOCK_SH):
            return self._history()

    def _history(self) -> list[Revision]:
        revisions = [self._read(path) for path in self.revisions_dir.glob("*.json")]
        return sorted((r for r in revisions if r is not None), key=lambda r: r.revision)

    def get(self, number: int) -> Revision | None:
        return self._read(self.revisions_dir / f"{number}.json")

    def deployed(self) -> Revision | None:
        return deployed(self.history())

    def next_number(self) -> int:
        """The number the next revision gets, as Helm numbers them."""
        return next_revision(self.history())

    def record(
        self,
        values: dict[str, Any],
        objects: list[dict[str, Any]],
        description: str,
        number: int | None = None,
    ) -> Revision:
        """Add a new deployed revision and supersede the one deployed before it. ``number``: the revision the
        objects were rendered as (``.Release.Revision``); refused if another revision took it meanwhile."""
        with self._locked():
            history = self._history()
            next_number = next_revision(history)
            if number is not None and number != next_number:
                raise ConcurrentRelease(
                    f"another operation (install/upgrade/rollback) is in progress: revision {number} was "
                    f"rendered, but {next_number - 1} is the newest now"
                )
            number = next_number
            revision = Revision(
                revision=number,
                status=DEPLOYED,
                description=description,
                values=values,
                objects=objects,
                updated=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            # The new revision first: a reader meanwhile sees two deployed (the newest counts), never none.
            self._write(revision)
            for previous in history:
                if previous.status == DEPLOYED:
                    previous.status = SUPERSEDED
                    self._write(previous)
            return revision

    def prune(self, keep: int) -> None:
        """Delete the oldest superseded revisions beyond ``keep``, as Helm's ``--history-max`` does."""
        if keep <= 0:
            return
        with self._locked():
            history = self._history()
            for old in history[: max(0, len(history) - keep)]:
                if old.status != DEPLOYED:
                    (self.revisions_dir / f"{old.revision}.json").unlink(missing_ok=True)

    @contextmanager
    def _locked(self, operation: int = fcntl.LOCK_EX) -> Iterator[None]:
        self.revisions_dir.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("a") as lock:
            fcntl.flock(lock, operation)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, path: Path) -> Revision | None:
        """The revision in ``path``; None when it is gone (pruned since the folder was listed)."""
        try:
            return Revision(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as err:
            raise UnreadableRelease(f"the release record {path} is unreadable: {err}") from err

    def _write(self, revision: Revision) -> None:
        write_json(self.revisions_dir / f"{revision.revision}.json", asdict(revision))
