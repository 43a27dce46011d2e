"""The drift check against the real terraform binary, offline, on fixture stacks with local state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract import XCOM_RESULT_FILE
from mlops.drift import check
from tests.terraform.fixtures import API_TOKEN, edit_world


def run_check(stack: Path, name: str, xcom_dir: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the pod's entrypoint; return its exit code and everything it printed."""
    code = check.main(["--stack", name, "--dir", str(stack)])
    out, err = capfd.readouterr()
    return code, out + err


def result_of(xcom_dir: Path) -> dict:
    return json.loads((xcom_dir / XCOM_RESULT_FILE).read_text())


def test_a_stack_in_sync_reports_no_drift(deploy, xcom_dir, capfd) -> None:
    stack = deploy("in_sync")
    code, _ = run_check(stack, "in-sync", xcom_dir, capfd)
    assert code == 0
    result = result_of(xcom_dir)
    assert result["status"] == "in_sync"
    assert result["drift"] == [] and result["failed_checks"] == []
    assert result["plan_exit_code"] == 0


def test_a_change_outside_terraform_is_drift_with_the_address_and_attributes(
    deploy, terraform_env, xcom_dir, capfd
) -> None:
    stack = deploy("world")
    edit_world(terraform_env, "bucket", size="large", tags={"team": "ml", "cost_center": "7"})
    code, _ = run_check(stack, "world", xcom_dir, capfd)
    assert code == 0
    result = result_of(xcom_dir)
    assert result["status"] == "drift"
    assert result["plan_exit_code"] == 2
    (resource,) = result["drift"]
    assert resource["address"] == "world_object.bucket"
    assert resource["change"] == "changed"
    assert {a["name"]: (a["before"], a["after"]) for a in resource["attributes"]} == {
        "size": ('"small"', '"large"'),
        "tags.cost_center": ('"42"', '"7"'),
    }


def test_a_resource_deleted_outside_terraform_is_drift(deploy, terraform_env, xcom_dir, capfd) -> None:
    stack = deploy("world")
    (terraform_env / "bucket.json").unlink()
    assert run_check(stack, "world", xcom_dir, capfd)[0] == 0
    (resource,) = result_of(xcom_dir)["drift"]
    assert resource == {"address": "world_object.bucket", "change": "deleted", "attributes": []}


def test_a_failing_check_block_without_drift_is_not_drift(deploy, xcom_dir, capfd) -> None:
    stack = deploy("failing_check")
    code, _ = run_check(stack, "failing-check", xcom_dir, capfd)
    assert code == 0
    result = result_of(xcom_dir)
    assert result["status"] == "in_sync"
    assert result["drift"] == []
    assert result["failed_checks"] == ["check.release_is_current: release 1.0.0 is out of date"]


def test_a_broken_configuration_is_an_error_not_a_result(xcom_dir, capfd, terraform_env, tmp_path) -> None:
    stack = tmp_path / "broken"
    import shutil

    from tests.terraform.fixtures import STACKS

    shutil.copytree(STACKS / "broken", stack)
    code, output = run_check(stack, "broken", xcom_dir, capfd)
    assert code == 1
    assert "ERROR: stack broken: terraform plan exited 1" in output
    assert "terraform_data.missing" in output
    assert not (xcom_dir / XCOM_RESULT_FILE).exists(), "an error must never look like a result"


def test_a_folder_without_terraform_files_is_an_error(xcom_dir, capfd, tmp_path) -> None:
    code, output = run_check(tmp_path, "empty", xcom_dir, capfd)
    assert code == 1
    assert "is not a folder of Terraform files" in output


def test_sensitive_values_never_appear_in_the_result_or_the_output(
    deploy, terraform_env, xcom_dir, capfd
) -> None:
    stack = deploy("world")
    new_secret = "rotated-by-hand-s3cr3t"
    edit_world(terraform_env, "credentials", secret=new_secret, size="small")
    code, output = run_check(stack, "world", xcom_dir, capfd)
    assert code == 0
    text = (xcom_dir / XCOM_RESULT_FILE).read_text()
    (resource,) = json.loads(text)["drift"]
    attributes = {a["name"]: a for a in resource["attributes"]}
    assert attributes["secret"]["before"] == attributes["secret"]["after"] == check.SENSITIVE
    assert attributes["secret"]["sensitive"] is True
    assert attributes["size"]["after"] == '"small"'
    for secret in (API_TOKEN, new_secret):
        assert secret not in text and secret not in output


def test_the_check_writes_nothing_into_the_stack_and_leaves_no_lock(
    deploy, terraform_env, xcom_dir, capfd
) -> None:
    stack = deploy("world")
    before = {p.relative_to(stack): p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    edit_world(terraform_env, "bucket", size="huge")
    assert run_check(stack, "world", xcom_dir, capfd)[0] == 0
    after = {p.relative_to(stack): p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    assert after == before, "the state, lock file or configuration changed"
    assert json.loads((terraform_env / "bucket.json").read_text())["size"] == "huge", (
        "the check changed the world"
    )


def test_backend_settings_merge_shared_and_per_stack() -> None:
    args = check.backend_arguments('{"bucket": "state", "region": "eu-west-1"}', '{"key": "a.tfstate"}')
    assert args == [
        "-backend-config=bucket=state",
        "-backend-config=key=a.tfstate",
        "-backend-config=region=eu-west-1",
    ]
    assert check.backend_arguments('{"key": "x"}', '{"key": "y"}') == ["-backend-config=key=y"]


@pytest.mark.parametrize(
    ("shared", "stack", "message"),
    [
        ("{nope", "{}", "shared backend config is not JSON"),
        ("{}", "[1]", "stack backend config must be a JSON object"),
    ],
)
def test_bad_backend_settings_are_refused_by_name(shared: str, stack: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check.backend_arguments(shared, stack)


def test_nested_sensitive_marks_hide_the_whole_container() -> None:
    plan = {
        "resource_drift": [
            {
                "address": "aws_db_instance.main",
                "change": {
                    "actions": ["update"],
                    "before": {"settings": {"password": "old-pw", "port": 5432}, "tags": ["a"]},
                    "after": {"settings": {"password": "new-pw", "port": 5433}, "tags": ["a", "b"]},
                    "before_sensitive": {"settings": {"password": True}},
                    "after_sensitive": {"settings": {"password": True}, "tags": [False, True]},
                },
            }
        ]
    }
    (resource,) = check.drifted_resources(plan)
    shown = {a["name"]: (a["before"], a["after"]) for a in resource["attributes"]}
    assert shown == {
        "settings.password": (check.SENSITIVE, check.SENSITIVE),
        "settings.port": ("5432", "5433"),
        "tags": (check.SENSITIVE, check.SENSITIVE),
    }
