"""The drift report: the stacks' results, minus accepted drift, as markdown for people and a verdict for alerts.

Runs on the Airflow worker. The allowlist of known, accepted drift is a YAML list (its file is named in
``platform.yaml``); each entry names a stack, a resource address and optionally attributes, as patterns in
which ``*`` matches anything (and everything else, brackets included, only itself), and says why the drift is
accepted::

    - stack: cluster
      address: module.eks.module.eks_managed_node_group["gpu"].aws_eks_node_group.this[0]
      attributes: ["scaling_config[0].desired_size"]
      reason: the cluster autoscaler sets the GPU group's size
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ALLOWLIST_KEYS = {"stack", "address", "attributes", "reason"}


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def matches(value: str, pattern: str) -> bool:
    """Whether ``value`` matches ``pattern``, in which only ``*`` is special (addresses are full of brackets)."""
    return _pattern(pattern).fullmatch(value) is not None


@dataclass(frozen=True)
class AcceptedDrift:
    stack: str
    address: str
    attributes: tuple[str, ...]
    reason: str

    def covers(self, stack: str, address: str, attribute: str | None) -> bool:
        if not (matches(stack, self.stack) and matches(address, self.address)):
            return False
        if not self.attributes:
            return True
        return attribute is not None and any(matches(attribute, pattern) for pattern in self.attributes)


def load_allowlist(path: Path) -> list[AcceptedDrift]:
    """Read and validate the allowlist; a missing file is an empty allowlist, a malformed one an error."""
    if not path.exists():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: the allowlist must be a YAML list of entries")
    allowlist = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path} entry {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a mapping with stack, address and reason")
        unknown = set(entry) - ALLOWLIST_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(ALLOWLIST_KEYS)}")
        missing = [key for key in ("stack", "address", "reason") if not str(entry.get(key) or "").strip()]
        if missing:
            raise ValueError(f"{where}: missing {missing} (every accepted drift needs a reason)")
        attributes = entry.get("attributes") or []
        if not isinstance(attributes, list):
            raise ValueError(f"{where}: attributes must be a list of patterns")
        allowlist.append(
            AcceptedDrift(
                stack=str(entry["stack"]),
                address=str(entry["address"]),
                attributes=tuple(str(a) for a in attributes),
                reason=str(entry["reason"]),
            )
        )
    return allowlist


def apply_allowlist(result: dict[str, Any], allowlist: list[AcceptedDrift]) -> dict[str, Any]:
    """Split a stack's drift into what needs attention and what the allowlist accepts (with its reason)."""
    stack = result["stack"]
    remaining: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    for resource in result.get("drift", []):
        address = resource["address"]
        attributes = resource["attributes"]
        if not attributes:  # deleted outside Terraform: only an entry without attributes accepts that
            rule = next((r for r in allowlist if not r.attributes and r.covers(stack, address, None)), None)
            (accepted if rule else remaining).append(
                {**resource, **({"reason": rule.reason} if rule else {})}
            )
            continue
        kept, waived = [], []
        for attribute in attributes:
            rule = next((r for r in allowlist if r.covers(stack, address, attribute["name"])), None)
            if rule:
                waived.append({**attribute, "reason": rule.reason})
            else:
                kept.append(attribute)
        if kept:
            remaining.append({**resource, "attributes": kept})
        if waived:
            accepted.append({**resource, "attributes": waived})
    status = result["status"]
    if status in ("drift", "in_sync"):
        status = "drift" if remaining else "in_sync"
    return {**result, "status": status, "drift": remaining, "accepted": accepted}


def _resource_lines(resources: list[dict[str, Any]], with_reason: bool) -> list[str]:
    lines = []
    for resource in resources:
        if resource["change"] == "deleted":
            reason = f" (accepted: {resource['reason']})" if with_reason and "reason" in resource else ""
            lines.append(f"- `{resource['address']}`: deleted outside Terraform{reason}")
            continue
        lines.append(f"- `{resource['address']}`: changed outside Terraform")
        for attribute in resource["attributes"]:
            reason = f" (accepted: {attribute['reason']})" if with_reason and "reason" in attribute else ""
            lines.append(f"  - `{attribute['name']}`: {attribute['before']} -> {attribute['after']}{reason}")
    return lines


def render_markdown(results: list[dict[str, Any]], title: str) -> str:
    """The report: a table of the stacks, then the drift, accepted drift, failed checks and errors of each."""
    lines = [
        f"# {title}",
        "",
        "| Stack | Status | Drifted resources | Accepted | Failed checks |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        status = {"in_sync": "in sync", "drift": "**DRIFT**", "error": "**ERROR**"}[result["status"]]
        lines.append(
            f"| {result['stack']} | {status} | {len(result.get('drift', []))} "
            f"| {len(result.get('accepted', []))} | {len(result.get('failed_checks', []))} |"
        )
    for result in results:
        sections = []
        if result["status"] == "error":
            sections += ["", result.get("error") or "the check failed: see the task log of this stack"]
        if result.get("drift"):
            sections += ["", *_resource_lines(result["drift"], with_reason=False)]
        if result.get("accepted"):
            sections += ["", "Accepted drift (allowlist):", "", *_resource_lines(result["accepted"], True)]
        if result.get("failed_checks"):
            sections += ["", "Failed checks (not drift):", "", *[f"- {c}" for c in result["failed_checks"]]]
        if sections:
            lines += ["", f"## {result['stack']}", *sections]
    return "\n".join(lines) + "\n"
