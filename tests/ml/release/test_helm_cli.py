"""The release stage against a cluster: ``python -m ml.release`` drives the ``helm`` CLI idempotently.

No cluster (and no helm binary) is available here, so ``helm`` is a fake on PATH (a mock of the cluster side):
it keeps releases in a JSON file, answers ``history``, ``get values``, ``get manifest``, ``upgrade --install``
and ``rollback`` in the shapes Helm prints with ``--output json``, and logs every call.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contract import XCOM_DIR_ENV
from ml.errors import StageError
from ml.release import helm

CHART = Path(__file__).resolve().parents[3] / "k8s" / "helm" / "inference-api"
FAKE_HELM = r"""#!PYTHON
import json, os, sys
import yaml
state_file, args = os.environ["FAKE_HELM_STATE"], sys.argv[1:]
with open(os.environ["FAKE_HELM_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
state = json.load(open(state_file)) if os.path.exists(state_file) else {"revisions": []}
flag = lambda name: args[args.index(name) + 1]
revisions = state["revisions"]
manifest = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: inference-api\n"
if args[0] == "history":
    if not revisions:
        sys.exit(print("Error: release: not found", file=sys.stderr) or 1)
    print(json.dumps([{k: r[k] for k in ("revision", "status", "description", "updated")} for r in revisions]))
elif args[:2] == ["get", "values"]:
    print(json.dumps(next(r for r in revisions if r["revision"] == int(flag("--revision")))["values"]))
elif args[:2] == ["get", "manifest"]:
    print(manifest)
elif args[0] == "upgrade":
    deployed = [r for r in revisions if r["status"] == "deployed"]
    values = json.loads(json.dumps(deployed[-1]["values"])) if deployed and "--reset-then-reuse-values" in args else {}
    for i, a in enumerate(args):
        if a == "--values":
            for key, value in yaml.safe_load(open(args[i + 1])).items():
                values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    for r in revisions:
        r["status"] = "superseded"
    revision = {"revision": len(revisions) + 1, "status": "deployed", "description": flag("--description"),
                "updated": "2026-11-26", "values": values}
    revisions.append(revision)
    print(json.dumps({"name": args[2], "version": revision["revision"], "info": {"status": "deployed"},
                      "config": values, "manifest": manifest}))
elif args[0] == "rollback":
    source = next(r for r in revisions if r["revision"] == int(args[2]))
    for r in revisions:
        r["status"] = "superseded"
    revisions.append({**source, "revision": len(revisions) + 1, "status": "deployed",
                      "description": f"Rollback to {args[2]}"})
else:
    sys.exit(print(f"fake helm: unexpected {args}", file=sys.stderr) or 1)
json.dump(state, open(state_file, "w"))
"""


@pytest.fixture()
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake ``helm`` first on PATH (mock: no cluster here); returns a reader of the calls it received."""
    binary = tmp_path / "bin" / "helm"
    binary.parent.mkdir()
    binary.write_text(FAKE_HELM.replace("PYTHON", sys.executable, 1))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HELM_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("FAKE_HELM_LOG", str(tmp_path / "calls.log"))
    log = tmp_path / "calls.log"
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def target(values_files: tuple[Path, ...] = ()) -> helm.Helm:
    return helm.Helm(CHART, "inference-api", "ml-serving", values_files)


def test_deploy_upgrades_once_and_a_repeat_changes_nothing_with_the_cli(calls, tmp_path) -> None:
    """Mock of the cluster: a fake helm binary answers."""
    extra = tmp_path / "prod.yaml"
    extra.write_text("ingress:\n  host: fraud.example.com\n")
    first = helm.deploy(target((extra,)), model_uri="models:/m/1", image_tag="0.1.0")
    assert (first.revision, first.changed, first.previous_revision) == (1, True, None)
    assert (first.workload_kind, first.workload_name) == ("Rollout", "inference-api")
    upgrade = next(call for call in calls() if call[0] == "upgrade")
    assert upgrade[:5] == ["upgrade", "--install", "inference-api", str(CHART), "--reset-then-reuse-values"]
    assert upgrade[upgrade.index("--values") + 1] == str(extra)  # environment values before the model's
    assert upgrade[-2:] == ["--namespace", "ml-serving"] and "--wait" not in upgrade

    second = helm.deploy(target(), model_uri="models:/m/2", image_tag="0.1.0")
    assert (second.revision, second.previous_revision) == (2, 1)
    before = len(calls())
    again = helm.deploy(target(), model_uri="models:/m/2", image_tag="0.1.0")
    assert (again.revision, again.changed) == (2, False)
    assert not any(call[0] == "upgrade" for call in calls()[before:])


def test_rollback_restores_the_previous_model_once_with_the_cli(calls) -> None:
    """Mock of the cluster: a fake helm binary answers."""
    helm.deploy(target(), model_uri="models:/m/1", image_tag="0.1.0")
    canary = helm.deploy(target(), model_uri="models:/m/2", image_tag="0.1.0")
    rolled = helm.rollback(target(), revision=canary.revision)
    assert (rolled.revision, rolled.restored_revision, rolled.restored_model_uri) == (3, 1, "models:/m/1")
    assert ["rollback", "inference-api", "1", "--history-max", "20", "--namespace", "ml-serving"] in calls()
    again = helm.rollback(target(), revision=canary.revision)
    assert (again.revision, again.changed) == (3, False)
    assert sum(call[0] == "rollback" for call in calls()) == 1


def test_rolling_back_an_image_canary_of_the_champion_restores_the_revision_before_it(calls) -> None:
    """Mock of the cluster: a fake helm binary answers. CI/CD's new image canaries the champion's own model: the
    failed revision serves the champion too, and must never be the one restored (it was, with "changed false",
    which left the canary paused)."""
    helm.deploy(target(), model_uri="models:/m/1", image_tag="0.1.0")
    image_canary = helm.deploy(target(), model_uri="models:/m/1", image_tag="ci-sha-1234")
    rolled = helm.rollback(target(), revision=image_canary.revision, to_model_uri="models:/m/1")
    assert (rolled.revision, rolled.restored_revision, rolled.changed) == (3, 1, True)
    assert helm.model_of(helm.deployed(target().history())) == ("models:/m/1", "0.1.0")
    again = helm.rollback(target(), revision=image_canary.revision, to_model_uri="models:/m/1")
    assert (again.revision, again.restored_revision, again.changed) == (3, 3, False)


def test_helm_failures_name_the_command_and_keep_helms_message(calls, monkeypatch) -> None:
    """Mock of the cluster: a fake helm binary answers."""
    with pytest.raises(StageError, match=r"revision 4 is not in the release's history \[\]"):
        helm.rollback(target(), revision=4)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StageError, match="needs helm on PATH"):
        target()


def test_the_image_ci_cd_deployed_survives_the_pipelines_model_deploy(calls) -> None:
    """Mock of the cluster: a fake helm binary answers. CI/CD ships images, the pipeline ships models."""
    helm.deploy(target(), model_uri="models:/m/1", image_tag="4f2a9c1")  # as the workflow's deploy job does
    deployment = helm.deploy(target(), model_uri="models:/m/2")
    assert (deployment.revision, deployment.image_tag) == (2, "4f2a9c1")
    assert helm.deploy(target(), model_uri="models:/m/2").changed is False


def test_the_release_stage_runs_with_the_release_images_packages_only(tmp_path) -> None:
    """The ML stage image has the project's dependencies alone: no httpx (the local controller's), no
    helm-python-sdk (the local renderer's). The release stage must not import them."""
    code = (
        "import sys, runpy; sys.modules['httpx'] = sys.modules['helm_python'] = None; "
        f"sys.argv = ['ml.release', 'deploy', '--release', 'r', '--namespace', 'n', "
        f"'--chart', {str(CHART)!r}, '--model-name', 'm', '--model-version', '1']; "
        "runpy.run_module('ml.release', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=CHART.parents[2], capture_output=True, text=True,
        env={"PATH": "/nonexistent", XCOM_DIR_ENV: str(tmp_path)},
    )  # fmt: skip
    # It gets as far as looking for the helm binary, which is what the image provides.
    assert done.returncode == 2, done.stderr
    assert "needs helm on PATH" in done.stderr


def test_a_release_serves_one_registered_model_and_refuses_another(calls) -> None:
    """Mock of the cluster: a fake helm binary answers. A run for another model name never lands in the release."""
    helm.deploy(target(), model_uri="models:/card-fraud/3")
    before = len(calls())
    with pytest.raises(
        StageError, match=r"serves the registered model 'card-fraud' \(revision 1\), not 'other'"
    ):
        helm.deploy(target(), model_uri="models:/other/1")
    assert not any(call[0] == "upgrade" for call in calls()[before:])
    assert (
        helm.registered_name("models:/a.b/c/7") == "a.b/c"
        and helm.registered_name("models:/m@champion") == "m"
    )


def test_a_models_own_chart_values_go_between_the_environments_and_the_runs(calls, tmp_path) -> None:
    """Mock of the cluster: the model file's values (``--values-json``) over the environment's values file, under
    what the deploy sets (the model version): each a ``--values`` file, in that order."""
    extra = tmp_path / "prod.yaml"
    extra.write_text("ingress:\n  host: income.example.com\n")
    model_values = {"analysis": {"maxPositiveShareShift": 0.2}, "workload": {"replicas": 2}}
    release = helm.Helm(CHART, "adult-income-api", "ml-serving", (extra,), model_values)
    helm.deploy(release, model_uri="models:/adult-income-classifier/1", image_tag="0.1.0")
    upgrade = next(call for call in calls() if call[0] == "upgrade")
    files = [upgrade[i + 1] for i, arg in enumerate(upgrade) if arg == "--values"]
    assert files[0] == str(extra) and len(files) == 3
    deployed = json.loads((tmp_path / "state.json").read_text())["revisions"][-1]["values"]
    assert deployed["analysis"] == {"maxPositiveShareShift": 0.2} and deployed["workload"] == {"replicas": 2}
    assert deployed["model"]["uri"] == "models:/adult-income-classifier/1"
    assert deployed["ingress"] == {"host": "income.example.com"}


@pytest.mark.parametrize(
    ("given", "problem"), [("[1, 2]", "must be a JSON object"), ("{replicas", "not JSON")]
)
def test_values_json_that_is_not_an_object_is_refused_before_helm_runs(
    calls, given: str, problem: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ml.release", "deploy", "--release", "r", "--namespace", "n", "--chart", str(CHART),
         "--values-json", given, "--model-name", "m", "--model-version", "1"],
        capture_output=True, text=True, check=False, cwd=CHART.parents[2],
    )  # fmt: skip
    assert done.returncode == 2 and problem in done.stderr
    assert calls() == []
