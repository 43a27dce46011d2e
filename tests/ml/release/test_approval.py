"""A person's answer to a release's approval, as the human-in-the-loop task hands it to ``deploy``."""

from __future__ import annotations

import json

import pytest

from contract import APPROVAL_NOBODY, APPROVE, REJECT
from ml.errors import StageError
from ml.release.approval import Answer


def answer(chosen: list[str], user: str | None = "ana", comment: str = "") -> str:
    return json.dumps(
        {
            "chosen_options": chosen,
            "params_input": {"comment": comment},
            "responded_at": "2026-11-27T10:00:00+00:00",
            "responded_by_user": {"id": user, "name": user} if user else None,
        }
    )


def test_an_approval_starts_the_release_and_is_recorded_with_who_and_when() -> None:
    approved = Answer.parse(answer([APPROVE], comment="checked the card"))
    assert approved.refusal() == ""
    assert approved.record() == {
        "approved": True, "by": "ana", "at": "2026-11-27T10:00:00+00:00", "comment": "checked the card"
    }  # fmt: skip


def test_a_rejection_refuses_with_who_and_why() -> None:
    rejected = Answer.parse(answer([REJECT], user="bob", comment=" Black Friday freeze "))
    assert rejected.refusal() == "rejected by bob: Black Friday freeze"
    assert Answer.parse(answer([REJECT], user="bob")).refusal() == "rejected by bob"


def test_no_answer_in_time_rejects_and_says_nobody_answered() -> None:
    """On a timeout Airflow takes the default (Reject) with no user."""
    timed_out = Answer.parse(answer([REJECT], user=None))
    assert timed_out.refusal() == "nobody approved the release in time (the approval's timeout rejects it)"
    assert timed_out.record()["by"] == APPROVAL_NOBODY


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "",
        "{}",
        json.dumps({"chosen_options": [APPROVE, REJECT]}),
        json.dumps({"chosen_options": ["Yes"]}),
    ],
)
def test_anything_else_is_not_an_answer_and_starts_nothing(text: str) -> None:
    with pytest.raises(StageError):
        Answer.parse(text)
