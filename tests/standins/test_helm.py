"""The ``helm`` stand-in's own contract: Helm's errors and exit code, and the history it keeps."""

from __future__ import annotations

import pytest

from contract import LOCAL_RELEASES_ENV
from standins import helm
from standins.release_store import ReleaseStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = helm.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_without_a_local_folder_for_releases_it_refuses_like_helm(capsys, monkeypatch) -> None:
    monkeypatch.delenv(LOCAL_RELEASES_ENV, raising=False)
    code, _, err = run(capsys, "history", "inference-api", "--output", "json")
    assert code == 1 and err.startswith("Error: the local helm keeps releases under $MLOPS_LOCAL_RELEASES")
    monkeypatch.setenv(LOCAL_RELEASES_ENV, "s3://bucket/releases")
    code, _, err = run(capsys, "history", "inference-api")
    assert code == 1 and "on this machine's disk, not at s3://bucket/releases" in err


def test_the_controller_refuses_a_remote_state_dir_before_creating_a_folder(
    capsys, tmp_path, monkeypatch
) -> None:
    """``Path("s3://b/x")`` is ``s3:/b/x``: the check reads the text, so no ``./s3:`` folder appears."""
    from standins.rollouts.__main__ import main as rollouts

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        rollouts(["status", "--state-dir", "s3://b/x", "--release", "inference-api"])
    assert exited.value.code == 2
    assert "on this machine's disk, not at s3://b/x" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_release_is_not_found_as_helm_says_it(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(LOCAL_RELEASES_ENV, str(tmp_path))
    code, out, err = run(
        capsys, "history", "inference-api", "--max", "20", "--output", "json", "--namespace", "x"
    )
    assert (code, out, err.strip()) == (1, "", "Error: release: not found")
    code, _, err = run(capsys, "get", "values", "inference-api", "--revision", "3", "--output", "json")
    assert code == 1 and "release: not found (revision 3)" in err
    code, _, err = run(capsys, "upgrade", "inference-api", "k8s/helm/inference-api")
    assert code == 1 and 'UPGRADE FAILED: "inference-api" has no deployed releases' in err


def test_history_keeps_the_deployed_revision_and_the_newest_ones(tmp_path) -> None:
    store = ReleaseStore(tmp_path, "inference-api")
    for n in range(1, 6):
        store.record({"model": {"uri": f"models:/m/{n}"}}, [], f"deploy {n}")
    store.prune(3)
    history = store.history()
    assert [(r.revision, r.status) for r in history] == [
        (3, "superseded"),
        (4, "superseded"),
        (5, "deployed"),
    ]
    assert history[-1].values == {"model": {"uri": "models:/m/5"}}


def test_without_prometheus_an_upgrade_is_refused_before_anything_is_recorded(
    capsys, monkeypatch, tmp_path
) -> None:
    """The local canary's analysis runs on Prometheus: the error says so and where to get it, and no revision is
    recorded that no controller would roll out."""
    from pathlib import Path

    bare = tmp_path / "bin"  # PATH without prometheus
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.setenv(LOCAL_RELEASES_ENV, str(tmp_path / "releases"))
    chart = Path(__file__).resolve().parents[2] / "k8s" / "helm" / "inference-api"
    code, _, err = run(
        capsys, "upgrade", "--install", "inference-api", str(chart), "--namespace", "ml-serving"
    )
    assert code == 1 and "needs Prometheus: install Debian's `prometheus` package (`make prometheus`)" in err
    assert ReleaseStore(tmp_path / "releases", "inference-api").history() == []
