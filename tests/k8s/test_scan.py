"""`make k8s-check` fails on a finding that is neither fixed nor justified, so the scan cannot pass silently.

The real target, the real checkov and trivy (installed by `make test-tools`), with one manifest added to the
scanned objects. The scan of the project's own objects runs in `make test` itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = [ROOT / ".tools" / "checkov" / "bin" / "checkov", ROOT / ".tools" / "trivy" / "bin" / "trivy"]

pytestmark = pytest.mark.skipif(
    not all(tool.exists() for tool in TOOLS), reason="checkov and trivy come with `make test-tools`"
)

PRIVILEGED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "debug", "namespace": "ml-serving"},
    "spec": {
        "containers": [
            {
                "name": "debug",
                "image": "busybox@sha256:" + "0" * 64,
                "imagePullPolicy": "Always",
                "securityContext": {"privileged": True},
            }
        ]
    },
}
#: Passes checkov (no binding, nothing privileged); trivy flags exec into pods (KSV-0053).
EXEC_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "debugger", "namespace": "ml-serving"},
    "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
}


def scan(tmp_path: Path, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "extra.yaml"
    manifest.write_text(yaml.safe_dump(extra))
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "k8s-check",
            f"K8S_SCAN={tmp_path / 'scan'}",
            f"K8S_SCAN_EXTRA={manifest}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_privileged_container_fails_the_scan(tmp_path: Path) -> None:
    result = scan(tmp_path, PRIVILEGED_POD)
    assert result.returncode != 0 and "CKV_K8S_16" in result.stdout, result.stdout + result.stderr


def test_a_finding_only_trivy_reports_fails_the_scan(tmp_path: Path) -> None:
    result = scan(tmp_path, EXEC_ROLE)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "KSV-0053" in result.stdout and "cluster/extra.yaml" in result.stdout, result.stdout
