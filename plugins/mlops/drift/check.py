"""Check one Terraform stack for drift: the entrypoint of the Terraform pod (``python -m mlops.drift.check``).

It works on a scratch copy of the stack (the image's files are read-only, and nothing is left behind), and
runs, never taking the state lock and never changing anything:

1. ``terraform init -input=false -backend-config=...`` with the backend settings given as JSON;
2. ``terraform plan -refresh-only -detailed-exitcode -lock=false -out=<plan>``: exit 0 in sync, 2 changes,
   1 error;
3. ``terraform show -json <plan>``, parsed here.

Drift is decided from the plan's ``resource_drift``, not from the exit code: a failing ``check`` block can
make a plan exit 2 with nothing drifted. Each drifted resource is reported with its address, what happened
(changed or deleted outside Terraform) and the attributes that changed; values Terraform marks sensitive are
replaced by ``(sensitive)`` before anything is written or logged. The result goes to ``$ML_XCOM_DIR/return.json``
(the KubernetesPodOperator's XCom file). A Terraform error exits 1 with a line ``ERROR: ...``.

Standard library only: the Terraform image carries Python 3 and this package, nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from contract import BACKEND_CONFIG_ENV, ERROR_PREFIX, write_xcom_result

log = logging.getLogger("mlops.drift.check")

SENSITIVE = "(sensitive)"
#: Longest value shown in a report; longer ones (policies, certificates) are cut.
MAX_VALUE_CHARS = 120
#: Terraform's own files in a stack folder that a scratch copy must not carry along.
SKIP_IN_COPY = (".terraform", "*.tfplan", "crash.log")


class TerraformError(Exception):
    """Terraform failed: the stack could not be checked."""


def _is_sensitive(marks: Any, path: Sequence[str | int]) -> bool:
    """Whether Terraform's sensitivity marks (``before_sensitive``/``after_sensitive``) cover ``path``."""
    node = marks
    for key in path:
        if node is True:
            return True
        if isinstance(node, dict) and isinstance(key, str):
            node = node.get(key, False)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return False
    return _any_true(node)


def _any_true(marks: Any) -> bool:
    """Whether any part of a value is marked sensitive; a container with one sensitive part is hidden whole."""
    if isinstance(marks, dict):
        return any(_any_true(value) for value in marks.values())
    if isinstance(marks, list):
        return any(_any_true(value) for value in marks)
    return marks is True


def _changed_paths(
    before: Any, after: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """Paths of the leaves that differ between two attribute values."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _changed_paths(before.get(key), after.get(key), (*path, key))
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            yield from _changed_paths(old, new, (*path, index))
    elif before != after:
        yield path


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(whole object)"


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _value_at(value: Any, path: Sequence[str | int]) -> Any:
    for key in path:
        if isinstance(value, dict) and isinstance(key, str):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
    return value


def drifted_resources(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Drifted resources of a plan (``terraform show -json``), each with its changed attributes, redacted."""
    drifted = []
    for entry in plan.get("resource_drift") or []:
        change = entry.get("change") or {}
        actions = list(change.get("actions") or [])
        if actions == ["no-op"]:
            continue
        before, after = change.get("before"), change.get("after")
        marks_before, marks_after = change.get("before_sensitive") or {}, change.get("after_sensitive") or {}
        attributes = []
        if after is None or "delete" in actions:
            kind = "deleted"
        else:
            kind = "changed"
            for path in _changed_paths(before, after):
                sensitive = _is_sensitive(marks_before, path) or _is_sensitive(marks_after, path)
                attributes.append(
                    {
                        "name": _dotted(path),
                        "before": SENSITIVE if sensitive else _shown(_value_at(before, path)),
                        "after": SENSITIVE if sensitive else _shown(_value_at(after, path)),
                        "sensitive": sensitive,
                    }
                )
        drifted.append({"address": entry["address"], "change": kind, "attributes": attributes})
    return drifted


def failed_checks(plan: dict[str, Any]) -> list[str]:
    """Check blocks and conditions that failed or errored: worth a look, but not drift."""
    failed = []
    for check in plan.get("checks") or []:
        if check.get("status") in ("fail", "error"):
            messages = [
                problem.get("message", "")
                for instance in check.get("instances") or []
                for problem in instance.get("problems") or []
            ]
            failed.append(
                f"{check['address']['to_display']}: {'; '.join(m for m in messages if m) or 'failed'}"
            )
    return failed


def summarise_plan(stack: str, plan: dict[str, Any], exit_code: int) -> dict[str, Any]:
    """The stack's result: in sync or drifted, decided from the plan itself."""
    if plan.get("errored"):
        raise TerraformError("terraform reported an errored plan")
    drift = drifted_resources(plan)
    return {
        "stack": stack,
        "status": "drift" if drift else "in_sync",
        "plan_exit_code": exit_code,
        "drift": drift,
        "failed_checks": failed_checks(plan),
        "terraform_version": plan.get("terraform_version"),
    }


def _terraform(args: list[str], cwd: Path, env: dict[str, str], ok: Sequence[int] = (0,)) -> tuple[int, str]:
    """Run terraform; its output is kept out of the log, since ``show -json`` holds sensitive values in clear."""
    result = subprocess.run(["terraform", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode not in ok:
        # Terraform prints "(sensitive value)" in its diagnostics, never the value itself.
        diagnostics = (result.stderr or result.stdout).strip()
        raise TerraformError(f"terraform {args[0]} exited {result.returncode}: {diagnostics[-2000:]}")
    return result.returncode, result.stdout


def backend_arguments(shared_json: str, stack_json: str) -> list[str]:
    """``-backend-config=key=value`` for the shared settings, overridden by the stack's own."""
    settings: dict[str, Any] = {}
    for source, text in (("shared", shared_json), ("stack", stack_json)):
        try:
            value = json.loads(text or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{source} backend config is not JSON: {err}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{source} backend config must be a JSON object, not {type(value).__name__}")
        settings.update(value)
    return [f"-backend-config={key}={value}" for key, value in sorted(settings.items())]


def check_stack(stack: str, stack_dir: Path, backend_config: list[str]) -> dict[str, Any]:
    """Init, plan refresh-only and read the plan of one stack, in a scratch copy that is removed afterwards."""
    if not (stack_dir.is_dir() and any(stack_dir.glob("*.tf"))):
        raise TerraformError(f"stack {stack!r}: {stack_dir} is not a folder of Terraform files")
    with tempfile.TemporaryDirectory(prefix=f"drift-{stack}-") as scratch:
        workdir = Path(scratch) / "stack"
        shutil.copytree(stack_dir, workdir, ignore=shutil.ignore_patterns(*SKIP_IN_COPY))
        env = {
            **os.environ,
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "TF_DATA_DIR": str(Path(scratch) / "data"),
            "CHECKPOINT_DISABLE": "1",
        }
        plan_file = Path(scratch) / "drift.tfplan"
        _terraform(["init", "-input=false", "-no-color", *backend_config], workdir, env)
        code, _ = _terraform(
            ["plan", "-refresh-only", "-detailed-exitcode", "-lock=false", "-input=false", "-no-color",
             f"-out={plan_file}"],
            workdir,
            env,
            ok=(0, 2),
        )  # fmt: skip
        _, shown = _terraform(["show", "-json", "-no-color", str(plan_file)], workdir, env)
    try:
        plan = json.loads(shown)
    except json.JSONDecodeError as err:
        raise TerraformError(f"terraform show -json printed no JSON: {err}") from None
    return summarise_plan(stack, plan, code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops.drift.check", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="name of the stack in the report")
    parser.add_argument("--dir", required=True, type=Path, help="folder of the stack's Terraform files")
    parser.add_argument(
        "--backend-config",
        default="{}",
        help=f"the stack's backend settings as a JSON object, over the shared ones in ${BACKEND_CONFIG_ENV}",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        backend = backend_arguments(os.environ.get(BACKEND_CONFIG_ENV, "{}"), args.backend_config)
        result = check_stack(args.stack, args.dir, backend)
    except (TerraformError, ValueError, OSError) as err:
        # One line the local runtime and the pod's termination message surface as the task's error.
        print(f"{ERROR_PREFIX}stack {args.stack}: {err}", file=sys.stderr, flush=True)  # noqa: T201 - the pod's contract
        return 1
    write_xcom_result(result)
    log.info(
        "stack %s: %s (%d drifted resources, %d failed checks, plan exit code %d)",
        args.stack,
        result["status"],
        len(result["drift"]),
        len(result["failed_checks"]),
        result["plan_exit_code"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
