"""The drift report: the allowlist of accepted drift and the markdown people read."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.drift.report import AcceptedDrift, apply_allowlist, load_allowlist, render_markdown
from mlops.platform_config import load_platform

NODE_GROUP = 'module.eks.module.eks_managed_node_group["gpu"].aws_eks_node_group.this[0]'


def drifted(*attributes: str, address: str = NODE_GROUP) -> dict:
    return {
        "stack": "cluster",
        "status": "drift",
        "failed_checks": [],
        "drift": [
            {
                "address": address,
                "change": "changed",
                "attributes": [
                    {"name": a, "before": "0", "after": "1", "sensitive": False} for a in attributes
                ],
            }
        ],
    }


def test_the_committed_allowlist_is_valid_and_accepts_the_autoscaled_size() -> None:
    allowlist = load_allowlist(load_platform().drift_allowlist_file)
    result = apply_allowlist(drifted("scaling_config[0].desired_size"), allowlist)
    assert result["status"] == "in_sync" and result["drift"] == []
    (accepted,) = result["accepted"]
    assert (
        accepted["attributes"][0]["reason"]
        == "the cluster autoscaler sets the desired size of the node groups"
    )


def test_only_the_listed_attributes_are_accepted() -> None:
    allowlist = [AcceptedDrift("cluster", NODE_GROUP, ("scaling_config[0].desired_size",), "autoscaler")]
    result = apply_allowlist(
        drifted("scaling_config[0].desired_size", "scaling_config[0].max_size"), allowlist
    )
    assert result["status"] == "drift"
    assert [a["name"] for a in result["drift"][0]["attributes"]] == ["scaling_config[0].max_size"]
    assert [a["name"] for a in result["accepted"][0]["attributes"]] == ["scaling_config[0].desired_size"]


def test_brackets_in_patterns_are_literal_and_star_matches_anything() -> None:
    rule = AcceptedDrift(
        "clu*", 'module.eks.module.eks_managed_node_group["*"].*', ("tags.*",), "tags by policy"
    )
    assert rule.covers("cluster", NODE_GROUP, "tags.owner")
    assert not rule.covers("cluster", NODE_GROUP, "tags")
    assert not AcceptedDrift("cluster", "aws_s3_bucket.data[0]", (), "x").covers(
        "cluster", "aws_s3_bucket.data0", None
    )


def test_a_deletion_is_accepted_only_by_an_entry_without_attributes() -> None:
    deleted = {
        "stack": "data",
        "status": "drift",
        "drift": [{"address": "aws_s3_bucket.scratch", "change": "deleted", "attributes": []}],
    }
    by_attribute = [AcceptedDrift("data", "aws_s3_bucket.scratch", ("tags",), "tags")]
    assert apply_allowlist(deleted, by_attribute)["status"] == "drift"
    whole = [
        AcceptedDrift("data", "aws_s3_bucket.scratch", (), "scratch bucket is emptied and removed by hand")
    ]
    assert apply_allowlist(deleted, whole)["status"] == "in_sync"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stack: a", "must be a YAML list"),
        ("- stack: a\n  address: b", r"missing \['reason'\]"),
        ("- stack: a\n  address: b\n  reason: r\n  atributes: [x]", r"unknown keys \['atributes'\]"),
        ("- stack: a\n  address: b\n  reason: r\n  attributes: x", "attributes must be a list"),
        ("- just a string", "must be a mapping"),
    ],
)
def test_a_malformed_allowlist_is_refused_with_the_entry_and_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_allowlist(path)


def test_the_markdown_lists_stacks_drift_accepted_drift_checks_and_errors() -> None:
    allowlist = [AcceptedDrift("cluster", NODE_GROUP, ("scaling_config[0].desired_size",), "autoscaler")]
    cluster = apply_allowlist(drifted("scaling_config[0].desired_size", "version"), allowlist)
    results = [
        cluster,
        {
            "stack": "data",
            "status": "in_sync",
            "drift": [],
            "accepted": [],
            "failed_checks": ["check.x: late"],
        },
        {"stack": "edge", "status": "error", "drift": [], "failed_checks": []},
    ]
    markdown = render_markdown(results, "Terraform drift check run-1")
    assert markdown.startswith("# Terraform drift check run-1\n")
    assert "| cluster | **DRIFT** | 1 | 1 | 0 |" in markdown
    assert "| data | in sync | 0 | 0 | 1 |" in markdown
    assert "| edge | **ERROR** | 0 | 0 | 0 |" in markdown
    assert f"- `{NODE_GROUP}`: changed outside Terraform\n  - `version`: 0 -> 1\n" in markdown
    assert "  - `scaling_config[0].desired_size`: 0 -> 1 (accepted: autoscaler)" in markdown
    assert "- check.x: late" in markdown
    assert "the check failed: see the task log of this stack" in markdown
