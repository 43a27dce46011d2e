"""A person's answer to a release's approval, as Airflow's human-in-the-loop task hands it to ``deploy``.

The task's result is ``{"chosen_options": [...], "params_input": {"comment": ...}, "responded_at": ...,
"responded_by_user": {"id": ..., "name": ...}}``; a timeout answers with the default (Reject) and no user.
Anything else is not an answer, and a release that needs one is not started on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from contract import APPROVAL_NOBODY, APPROVE, REJECT
from ml.errors import StageError


@dataclass(frozen=True)
class Answer:
    approved: bool
    by: str  # empty: nobody answered (the timeout's default)
    at: str
    comment: str

    @classmethod
    def parse(cls, text: str) -> Answer:
        try:
            result: Any = json.loads(text)
            chosen = result["chosen_options"]
        except (ValueError, TypeError, KeyError) as err:
            raise StageError(f"the release needs an approval and got no answer ({text[:200]!r})") from err
        if chosen not in ([APPROVE], [REJECT]):
            raise StageError(f"the approval's answer {chosen!r} is neither [{APPROVE!r}] nor [{REJECT!r}]")
        user = result.get("responded_by_user") or {}
        return cls(
            approved=chosen == [APPROVE],
            by=str(user.get("name") or user.get("id") or ""),
            at=str(result.get("responded_at") or ""),
            comment=str((result.get("params_input") or {}).get("comment") or "").strip(),
        )

    def refusal(self) -> str:
        """Why the release does not start (empty when approved)."""
        if self.approved:
            return ""
        if not self.by:
            return "nobody approved the release in time (the approval's timeout rejects it)"
        return f"rejected by {self.by}" + (f": {self.comment}" if self.comment else "")

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "by": self.by or APPROVAL_NOBODY}
