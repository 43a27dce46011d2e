"""The local release survives its own faults: files rewritten while read, unreadable records, a controller that
fails or is killed. Real processes throughout: the ``helm`` stand-in, the controller, the router and the
inference APIs on loopback, real signals; the stable API must keep answering through the release's endpoint."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract import LOCAL_CONTROLLER_LOG, runs_module
from ml.release import helm
from standins import rollouts
from standins.release_store import ReleaseStore
from standins.rollouts import runs_prometheus
from standins.rollouts.analysis import SUCCESSFUL
from standins.rollouts.controller import ATTEMPTS
from standins.rollouts.router import ROUTES_FILE, Router, Routes, read_routes
from standins.rollouts.traffic import Traffic
from tests.standins.test_local_canary import IMAGE_TAG, outcome, uri

# Kills and restarts controllers and servers (two minutes on 2 cores): run by `make test-scheduler`, as CI does.
pytestmark = pytest.mark.drill

REWRITES = 400


def _rewrite_release(root: str, done: Any) -> None:
    """What ``helm upgrade --history-max 3`` does to the records, over and over: a new deployed revision, the
    previous one superseded, the oldest pruned."""
    store = ReleaseStore(Path(root), "stress")
    objects = [{"kind": "Rollout", "spec": {"template": {"padding": "x" * 20_000}}}]
    for n in range(REWRITES):
        store.record({"model": {"uri": f"models:/m/{n}"}}, objects, f"upgrade {n}")
        store.prune(3)
    done.set()


def test_release_records_rewritten_while_the_controller_reads_them_are_never_read_partially(tmp_path) -> None:
    """The bench reproduction of the finding (many rewrites while reading), on the controller's own reads."""
    store = ReleaseStore(tmp_path, "stress")
    store.record({}, [], "install")
    done = multiprocessing.Event()
    writer = multiprocessing.Process(target=_rewrite_release, args=(str(tmp_path), done))
    writer.start()
    reads, failures = 0, []
    while not done.is_set():
        reads += 1
        try:
            if store.deployed() is None:
                failures.append("no deployed revision")
        except Exception as err:
            failures.append(repr(err))
    writer.join(timeout=60)
    assert reads > 100, reads
    assert failures == [], f"{len(failures)} of {reads} reads failed, e.g. {failures[:3]}"


def test_routes_rewritten_while_the_router_reads_them_are_never_read_partially(tmp_path) -> None:
    """The router process follows ``routes.json`` while the controller moves the split: never a half file."""
    router = Router(tmp_path, 0)
    routes = Routes(tmp_path / ROUTES_FILE)
    router.stable = "http://127.0.0.1:1"
    done = multiprocessing.Event()

    def move_the_split() -> None:
        for n in range(REWRITES * 5):
            router.canary = f"http://127.0.0.1:{n + 2}"
            router.weight = n % 100
        done.set()

    writer = multiprocessing.Process(target=move_the_split)
    writer.start()
    reads, failures = 0, 0
    while not done.is_set():
        reads += 1
        routes._seen = None  # read the file every time, not only when it changed
        failures += routes.get()["stable"] != "http://127.0.0.1:1"
    writer.join(timeout=60)
    assert reads > 100 and failures == 0, f"{failures} of {reads} reads failed"


def _release(target: helm.Helm, release_dir: Path, versions: dict[str, Any]) -> dict[str, Any]:
    """The champion released (stable at once) and a record to ask it about."""
    deployment = helm.deploy(target, model_uri=uri(versions["first"]), image_tag=IMAGE_TAG)
    result = outcome(release_dir, deployment.revision)
    assert result["phase"] == "Healthy", _failed(result)
    return Traffic.from_prepared(versions["prepared"], 1).records[0]


def _failed(result: dict[str, Any]) -> str:
    """Why a revision did not end Healthy: the controller's message and every measurement that did not pass."""
    missed = [m for m in result["measurements"] if m["phase"] != SUCCESSFUL]
    return f"{result['message']}; measurements not passed: {missed}"


def _answers(release_dir: Path, record: dict[str, Any]) -> str:
    """The model version the release's endpoint (the router) serves, asked as a client asks."""
    endpoint = rollouts.read_status(release_dir)["endpoint"]
    answer = httpx.post(f"{endpoint}/predict", json=record, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def _keeps_answering(release_dir: Path, record: dict[str, Any], version: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _answers(release_dir, record) == version
        time.sleep(0.2)


def test_a_controller_fed_an_unreadable_record_keeps_its_last_good_state_and_stable_serves(
    target, local_helm, versions
) -> None:
    record = _release(target, local_helm, versions)
    deployed = local_helm / "revisions" / "1.json"
    good = deployed.read_text()
    pid = rollouts.running_pid(local_helm)
    for unreadable in ("", good[: len(good) // 2]):  # an empty file, then half of one
        deployed.write_text(unreadable)
        _keeps_answering(local_helm, record, versions["first"], seconds=2)  # four ticks of the controller
        assert rollouts.running_pid(local_helm) == pid
        assert rollouts.read_status(local_helm)["phase"] == "Healthy"
    assert "release record" in (local_helm / LOCAL_CONTROLLER_LOG).read_text()
    deployed.write_text(good)
    assert [r.revision for r in target.history()] == [1]  # readable again; nothing was rolled out meanwhile
    assert rollouts.running_pid(local_helm) == pid


def test_a_controller_error_during_a_rollout_aborts_it_and_leaves_stable_serving(
    target, local_helm, versions
) -> None:
    """A record the controller cannot roll out (its Rollout has no pod template): an unexpected error, not a
    verdict on a model. The controller retries, then aborts the revision; stable serves all along."""
    record = _release(target, local_helm, versions)
    pid = rollouts.running_pid(local_helm)
    broken = [{"kind": "Rollout", "metadata": {"name": target.release}, "spec": {"strategy": {"canary": {}}}}]
    revision = ReleaseStore(local_helm.parent, target.release).record({}, broken, "a broken record").revision
    _keeps_answering(local_helm, record, versions["first"], seconds=2)
    result = outcome(local_helm, revision, timeout_s=30)
    assert result["phase"] == "Degraded" and result["abort"] is True
    assert f"failed {ATTEMPTS} times rolling out revision {revision}: KeyError" in result["message"]
    assert rollouts.running_pid(local_helm) == pid
    assert _answers(local_helm, record) == versions["first"]
    assert "Traceback" in (local_helm / LOCAL_CONTROLLER_LOG).read_text()


def test_a_controller_killed_with_sigkill_leaves_stable_serving_and_the_next_one_takes_over(
    target, local_helm, versions
) -> None:
    record = _release(target, local_helm, versions)
    endpoint = rollouts.read_status(local_helm)["endpoint"]
    processes = rollouts.read_processes(local_helm)
    old_stable = processes["servers"][0]["pid"]
    assert runs_module(old_stable, rollouts.SERVER_COMMAND)  # what the checks below look for is there
    os.kill(rollouts.running_pid(local_helm) or 0, signal.SIGKILL)
    time.sleep(0.5)
    assert rollouts.running_pid(local_helm) is None
    assert runs_module(old_stable, rollouts.SERVER_COMMAND)  # the dead controller's server still serves
    _keeps_answering(local_helm, record, versions["first"], seconds=2)

    # Any helm command starts a new controller, as the cluster would: it takes over the router and the endpoint,
    # restores stable and retires the server the dead one left.
    assert [r.revision for r in target.history()] == [1]
    deadline = time.monotonic() + 120
    while runs_module(old_stable, rollouts.SERVER_COMMAND):
        assert time.monotonic() < deadline, "the leftover stable server was not retired"
        _keeps_answering(local_helm, record, versions["first"], seconds=0.5)
    assert rollouts.read_status(local_helm)["endpoint"] == endpoint
    assert rollouts.read_processes(local_helm)["router"]["pid"] == processes["router"]["pid"]
    # ...and the release's Prometheus, with its history: one Prometheus, never a second beside a forgotten one.
    prometheus = rollouts.read_processes(local_helm)["prometheus"]
    assert prometheus == processes["prometheus"] and runs_prometheus(prometheus["pid"], prometheus["config"])
    _keeps_answering(local_helm, record, versions["first"], seconds=1)

    now = rollouts.read_processes(local_helm)
    pids = [(now["router"]["pid"], rollouts.ROUTER_COMMAND)]
    pids += [(s["pid"], rollouts.SERVER_COMMAND) for s in now["servers"]]
    assert all(runs_module(pid, command) for pid, command in pids)
    assert rollouts.stop(local_helm) is True  # the explicit stop ends them all
    assert not [pid for pid, command in pids if runs_module(pid, command)]
    assert not runs_prometheus(prometheus["pid"], prometheus["config"])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{endpoint}/health", timeout=2)


def test_a_controller_that_takes_over_sends_a_dead_ones_canary_traffic_back_to_stable_at_once(
    target, local_helm, versions
) -> None:
    """A controller killed mid-canary leaves the router sending the canary its share with nobody judging it. The
    controller that takes over sends all of it back to stable before anything else (it left 7.5-16 % there while
    it restored stable, up to the next deploy), then rolls the revision out again from its first step."""
    record = _release(target, local_helm, versions)
    deployment = helm.deploy(target, model_uri=uri(versions["good"]), image_tag=IMAGE_TAG)
    routes = local_helm / ROUTES_FILE
    deadline = time.monotonic() + 120
    while not (read_routes(routes) or {}).get("weight"):
        assert time.monotonic() < deadline, "the canary never got traffic"
        time.sleep(0.05)
    os.kill(rollouts.running_pid(local_helm) or 0, signal.SIGKILL)
    time.sleep(0.5)
    assert (read_routes(routes) or {}).get("weight"), "the dead controller's canary share is what is tested"

    target.history()  # any helm command starts a controller, which takes over
    taken_over = time.monotonic()
    while (read_routes(routes) or {}).get("weight"):
        assert time.monotonic() - taken_over < 2, (
            f"traffic still on the orphaned canary: {read_routes(routes)}"
        )
        time.sleep(0.05)
    assert (read_routes(routes) or {})["canary"] is None
    assert _answers(local_helm, record) == versions["first"]
    result = outcome(local_helm, deployment.revision)  # rolled out again, to its end
    assert result["phase"] == "Healthy", _failed(result)
    assert _answers(local_helm, record) == versions["good"]
