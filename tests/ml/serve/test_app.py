"""The inference API against a real model, trained and registered in a real MLflow server on loopback."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from contract import CANARY_PROMOTED, CANARY_VERDICT_TAG, CHAMPION_AT_EVALUATION_TAG
from ml import tracking
from ml.errors import StageError
from ml.schema import to_model_input
from ml.serve import service as service_module
from ml.serve.app import create_app
from ml.serve.service import PredictResponse
from ml.serve.settings import Settings
from tests.helpers import CHALLENGER, CHAMPION, register_champion, split_records

MODEL = "serve-test-model"


@pytest.fixture(scope="module")
def registered(trained_model: dict[str, Any]) -> dict[str, Any]:
    out, trained = trained_model["prepared"], trained_model["trained"]
    result, version = register_champion(out, trained, MODEL, run_key="serve/1")
    manifest, _, records = split_records(out, 300)
    return {"version": version, "model_uri": trained.model_uri, "records": records, "manifest": manifest,
            "threshold": result.metrics.threshold}  # fmt: skip


@pytest.fixture(scope="module")
def client(registered) -> Any:
    with TestClient(
        create_app(Settings(model_uri=f"models:/{MODEL}@{CHAMPION}", max_batch_size=500))
    ) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        yield client


def test_served_scores_equal_the_mlflow_models_scores(client, registered) -> None:
    import mlflow.pyfunc

    records = registered["records"]
    response = client.post("/predict", json={"instances": records})
    assert response.status_code == 200
    body = response.json()
    served = np.array([p["probability"] for p in body["predictions"]])
    manifest = registered["manifest"]
    frame = to_model_input(pd.DataFrame(records), manifest["categorical"])
    expected = tracking.positive_scores(mlflow.pyfunc.load_model(registered["model_uri"]), frame)
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-7)
    assert (body["model_name"], body["model_version"]) == (MODEL, registered["version"])
    assert body["threshold"] == pytest.approx(registered["threshold"], abs=1e-6)
    assert [p["decision"] for p in body["predictions"]] == [bool(s >= body["threshold"]) for s in served]
    # The documented (not FastAPI-validated) response model holds for a real answer, field for field.
    assert PredictResponse.model_validate(body).model_dump() == body


def test_one_record_without_a_batch_wrapper(client, registered) -> None:
    response = client.post("/predict", json=registered["records"][0])
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


def test_missing_values_are_accepted_as_null(client, registered) -> None:
    record = {**registered["records"][0], "amount": None, "channel": None}
    assert client.post("/predict", json=record).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        (lambda r: {k: v for k, v in r.items() if k != "amount"}, 422, "amount: Field required"),
        (lambda r: {**r, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        (lambda r: {**r, "amount": "12.5"}, 422, "amount: Input should be a valid"),
        (lambda r: {**r, "amount": True}, 422, "amount: Input should be a valid"),
        (lambda r: {**r, "channel": 3}, 422, "channel: Input should be a valid string"),
        (lambda r: {"instances": []}, 422, "instances: the batch is empty"),
        (lambda r: {"instances": [r] * 501}, 422, "501 records is over the limit of 500"),
        (lambda r: {"instances": [r, {**r, "amount": [1]}]}, 422, "instances[1].amount"),
        (lambda r: {"instances": {"a": 1}}, 422, "instances: must be a list"),
        (lambda r: [r], 422, "the body must be a JSON object"),
        (lambda r: {**r, "amount": 1e300}, 422, "amount: 1e+300 is beyond float32's range"),
    ],
)
def test_bad_input_gets_a_4xx_that_names_the_problem(client, registered, change, status, message) -> None:
    response = client.post("/predict", json=change(registered["records"][0]))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"amount": 1,', 400, "malformed JSON"),
        (b'{"amount": NaN}', 400, "malformed JSON"),
        (b'{"amount": Infinity}', 400, "malformed JSON"),
        (b"x" * 2_000_001, 413, "over the limit of 2000000"),
    ],
)
def test_malformed_or_oversized_bodies(client, body: bytes, status: int, message: str) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_a_number_that_overflows_to_infinity_is_refused(client, registered) -> None:
    body = orjson.dumps(registered["records"][0]).replace(b'"amount":', b'"amount":1e999,"_":', 1)
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "number is infinity" in response.json()["detail"]


def test_metrics_are_prometheus_text_with_the_names_alerts_query(client, registered) -> None:
    client.post("/predict", json=registered["records"][0])
    client.post("/predict", json={"instances": []})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    statuses = {
        s.labels["status"] for s in families["http_requests"].samples if s.name == "http_requests_total"
    }
    assert {"200", "422"} <= statuses
    assert families["http_request_duration_seconds"].type == "histogram"
    assert any(
        s.value > 0 for s in families["prediction_score"].samples if s.name == "prediction_score_count"
    )
    info = [s for s in families["model_info"].samples if s.value == 1]
    assert (info[0].labels["model_name"], info[0].labels["model_version"]) == (MODEL, registered["version"])


def test_ready_is_false_until_the_model_is_loaded(registered, monkeypatch) -> None:
    release = threading.Event()
    real_load = service_module.load

    def slow_load(*args: Any) -> Any:
        release.wait(30)
        return real_load(*args)

    monkeypatch.setattr(service_module, "load", slow_load)
    with TestClient(create_app(Settings(model_uri=f"models:/{MODEL}@{CHAMPION}"))) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        assert client.post("/predict", json=registered["records"][0]).status_code == 503
        release.set()
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.post("/predict", json=registered["records"][0]).status_code == 200


def test_a_model_that_cannot_load_is_reported_not_served(registered) -> None:
    with TestClient(create_app(Settings(model_uri=f"models:/{MODEL}@no-such-alias"))) as client:
        deadline = time.monotonic() + 30
        while "no-such-alias" not in client.get("/ready").json().get("detail", ""):
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.1)
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


def test_each_inference_is_a_span_with_the_model_input_size_and_score(registered) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    settings = Settings(model_uri=f"models:/{MODEL}@{CHAMPION}", tracing=True)
    with TestClient(create_app(settings, span_exporter=exporter)) as traced:
        deadline = time.monotonic() + 60
        while traced.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        score = traced.post("/predict", json=registered["records"][0]).json()["predictions"][0]["probability"]
        traced.post("/predict", json={"instances": registered["records"][:7]})
    first, batch = exporter.get_finished_spans()
    assert first.name == "predict"
    assert first.attributes["model.name"] == MODEL
    assert first.attributes["model.version"] == registered["version"]
    assert first.attributes["input.size"] == 1
    assert first.attributes["prediction.score"] == pytest.approx(score)
    assert batch.attributes["input.size"] == 7


def test_tracing_is_off_by_default() -> None:
    assert Settings(model_uri="models:/m@a").tracing is False


def test_runs_uris_and_exported_folders_serve_the_same_scores(registered, tmp_path) -> None:
    from ml.serve.export import export
    from ml.serve.model import load

    reference_card, reference = load(f"models:/{MODEL}/{registered['version']}")
    run_id = tracking.client().get_model_version(MODEL, registered["version"]).run_id
    run_card, from_run = load(f"runs:/{run_id}/model")
    exported = export(f"models:/{MODEL}@{CHAMPION}", tmp_path / "exported")
    folder_card, from_folder = load(exported["output"])
    records = registered["records"][:50]
    for card, scorer in ((run_card, from_run), (folder_card, from_folder)):
        np.testing.assert_array_equal(scorer.scores(records), reference.scores(records))
        assert card.threshold == pytest.approx(reference_card.threshold)
    assert (folder_card.name, folder_card.version) == (MODEL, registered["version"])


def test_a_folder_that_was_not_exported_is_refused(tmp_path) -> None:
    from ml.errors import StageError
    from ml.serve.model import load

    with pytest.raises(StageError, match=r"nor a folder exported by ml\.serve\.export"):
        load(str(tmp_path))


def test_reload_follows_a_moved_alias_and_is_not_ready_meanwhile(registered, monkeypatch) -> None:
    version = registered["version"]
    client_ = tracking.client()
    client_.set_registered_model_alias(MODEL, "reload-test", version)
    settings = Settings(model_uri=f"models:/{MODEL}@reload-test", admin_token="s3cret")
    with TestClient(create_app(settings)) as api:
        deadline = time.monotonic() + 60
        while api.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        model_uri = registered["model_uri"]  # the same model, registered again as a new version
        other = client_.create_model_version(MODEL, model_uri, model_id=model_uri.removeprefix("models:/"),
                                             tags=client_.get_model_version(MODEL, version).tags)  # fmt: skip
        client_.set_registered_model_alias(MODEL, "reload-test", other.version)
        release = threading.Event()
        real_load = service_module.load
        monkeypatch.setattr(service_module, "load", lambda *args: (release.wait(30), real_load(*args))[1])
        assert api.post("/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.post("/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 202
        assert api.get("/ready").status_code == 503
        served = api.post("/predict", json=registered["records"][0])
        assert served.status_code == 200 and served.json()["model_version"] == version  # still the old model
        release.set()
        while api.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert api.post("/predict", json=registered["records"][0]).json()["model_version"] == other.version


def test_reload_is_off_without_an_admin_token(client) -> None:
    response = client.post("/reload")
    assert response.status_code == 404
    assert "set SERVE_ADMIN_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON; Charset=UTF-8", 200),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=latin-1", 415),
        (None, 415),
    ],
)
def test_predict_takes_json_only(client, registered, content_type: str | None, status: int) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = orjson.dumps(registered["records"][0])
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert "Content-Type: application/json" in response.json()["detail"]


UNRELEASED = "serve-unreleased-model"


def wait_loaded(api: TestClient) -> dict[str, Any]:
    """The /ready answer once loading has ended, in success or failure."""
    deadline = time.monotonic() + 60
    while (answer := api.get("/ready").json()).get("detail") == "model is loading":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return answer  # type: ignore[no-any-return]


def new_version(registered: dict[str, Any], **tags: str) -> str:
    """Another version of ``UNRELEASED``: the served model, with the pipeline's tags but no verdict, plus ``tags``."""
    client_ = tracking.client()
    if not client_.search_registered_models(f"name='{UNRELEASED}'"):
        client_.create_registered_model(UNRELEASED)
    pipeline = client_.get_model_version(MODEL, registered["version"]).tags
    kept = {k: v for k, v in pipeline.items() if k != CANARY_VERDICT_TAG}
    model_uri = registered["model_uri"]
    return str(client_.create_model_version(UNRELEASED, model_uri, model_id=model_uri.removeprefix("models:/"),
                                            tags={**kept, **tags}).version)  # fmt: skip


def test_the_champion_is_served_only_with_a_promoted_verdict(registered, monkeypatch, tmp_path) -> None:
    aborted, unjudged = new_version(registered, **{CANARY_VERDICT_TAG: "aborted"}), new_version(registered)
    client_ = tracking.client()
    champion = f"models:/{UNRELEASED}@{CHAMPION}"
    for version, said in ((aborted, "canary verdict is 'aborted'"), (unjudged, "canary has no verdict")):
        client_.set_registered_model_alias(UNRELEASED, CHAMPION, version)
        with TestClient(create_app(Settings(model_uri=champion))) as api:
            answer = wait_loaded(api)
            assert answer["ready"] is False
            assert (
                f"refusing to serve {UNRELEASED}@{CHAMPION}: it points at v{version}, whose {said}"
                in (answer["detail"])
            )
            assert "SERVE_ALLOW_UNRELEASED=true" in answer["detail"]
            assert api.post("/predict", json=registered["records"][0]).status_code == 503
    # Other aliases (the candidate before any verdict) and pinned versions are served.
    client_.set_registered_model_alias(UNRELEASED, CHALLENGER, unjudged)
    for uri in (f"models:/{UNRELEASED}@{CHALLENGER}", f"models:/{UNRELEASED}/{aborted}"):
        with TestClient(create_app(Settings(model_uri=uri))) as api:
            assert wait_loaded(api)["ready"] is True, uri
    # But no alias serves a version whose release failed: the candidate alias stays on it until the next release.
    client_.set_registered_model_alias(UNRELEASED, CHALLENGER, aborted)
    with TestClient(create_app(Settings(model_uri=f"models:/{UNRELEASED}@{CHALLENGER}"))) as api:
        answer = wait_loaded(api)
        assert answer["ready"] is False
        assert (
            f"{UNRELEASED}@{CHALLENGER}: it points at v{aborted}, whose release was aborted"
            in answer["detail"]
        )
    # Exporting the champion to a folder checks the same, so a folder cannot carry an unreleased model past it.
    from ml.serve.export import main as export

    with pytest.raises(StageError, match=f"refusing to serve {UNRELEASED}@{CHAMPION}"):
        export(["--model-uri", champion, "--output", str(tmp_path / "exported")])
    assert not (tmp_path / "exported").exists()
    assert export(["--model-uri", champion, "--output", str(tmp_path / "exported"), "--allow-unreleased"])
    # A person who moved the alias on purpose says so.
    monkeypatch.setenv("SERVE_ALLOW_UNRELEASED", "true")
    with TestClient(create_app(Settings(model_uri=champion))) as api:
        assert wait_loaded(api)["model_version"] == unjudged


def test_promotion_tags_the_verdict_before_it_moves_the_alias(registered, monkeypatch) -> None:
    from mlflow import MlflowClient

    from ml.promote import promote

    client_ = tracking.client()
    first = new_version(registered, **{CANARY_VERDICT_TAG: CANARY_PROMOTED})
    client_.set_registered_model_alias(UNRELEASED, CHAMPION, first)
    second = new_version(registered, **{CHAMPION_AT_EVALUATION_TAG: first})
    seen: list[str | None] = []
    real_move = MlflowClient.set_registered_model_alias

    def move(self: Any, name: str, alias: str, version: str) -> None:
        seen.append(self.get_model_version(name, version).tags.get(CANARY_VERDICT_TAG))
        real_move(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", move)
    verdict = {"phase": "Healthy", "model_uri": f"models:/{UNRELEASED}/{second}", "measurements": []}
    assert promote(name=UNRELEASED, version=second, alias=CHAMPION, verdict=verdict).promoted
    assert seen == [CANARY_PROMOTED]  # an API (re)loading the champion at any moment finds the verdict
    monkeypatch.undo()
    with TestClient(create_app(Settings(model_uri=f"models:/{UNRELEASED}@{CHAMPION}"))) as api:
        assert wait_loaded(api)["model_version"] == second


def test_the_served_champion_alias_is_the_platforms_production_alias() -> None:
    from mlops.platform_config import load_platform

    assert Settings(model_uri="models:/m@a").champion_alias == load_platform().registry.production_alias


def test_the_openapi_document_declares_the_limits_answers(client) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    assert {"408", "413", "415", "503"} <= set(responses)


def test_make_serve_refuses_an_unreleased_champion_before_starting(registered, monkeypatch) -> None:
    from scripts.serve import check

    aborted = new_version(registered, **{CANARY_VERDICT_TAG: "aborted"})
    tracking.client().set_registered_model_alias(UNRELEASED, CHAMPION, aborted)
    with pytest.raises(SystemExit, match=rf"it points at v{aborted}, whose canary verdict is 'aborted'"):
        check(f"models:/{UNRELEASED}@{CHAMPION}", UNRELEASED)
    monkeypatch.setenv("SERVE_ALLOW_UNRELEASED", "true")
    check(f"models:/{UNRELEASED}@{CHAMPION}", UNRELEASED)


def test_observing_a_batchs_scores_at_once_equals_observing_them_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from ml.serve.metrics import PREDICTION_SCORE, observe_many

    registry = CollectorRegistry()
    bounds = PREDICTION_SCORE._upper_bounds[:-1]  # as the histogram was declared (without +Inf)
    one_by_one = Histogram("one", "one", buckets=bounds, registry=registry)
    at_once = Histogram("many", "many", buckets=bounds, registry=registry)
    values = np.concatenate([np.random.default_rng(0).random(5_000), [0.0, 0.05, 0.5, 1.0, 0.05000001]])
    for value in values:
        one_by_one.observe(float(value))
    observe_many(at_once, values)
    samples = {
        family.name: {(s.name.split("_", 1)[1], s.labels.get("le")): s.value for s in family.samples
                      if "created" not in s.name}
        for family in registry.collect()
    }  # fmt: skip
    total = samples["one"].pop(("sum", None))
    assert samples["many"].pop(("sum", None)) == pytest.approx(total, rel=1e-12)
    assert samples["one"] == samples["many"]  # every bucket's count, and the count


def test_a_request_the_model_fails_on_is_a_500_and_its_connection_serves_the_next(
    registered, monkeypatch, capfd
) -> None:
    """A model that raises while scoring: a 500 with the traceback in the log, counted as the server's error, and
    the kept-alive connection still answers the next request. Before, uvicorn closed it after the 500 and the local
    router, which keeps its connections to the API alive, answered the next client 502."""
    import http.client

    import uvicorn

    from ml.serve.server import config
    from tests.conftest import free_port

    settings = Settings(model_uri=f"models:/{MODEL}@{CHAMPION}")
    app, port = create_app(settings), free_port()
    server_config = config(settings, port=port)
    server_config.app, server_config.factory = app, False
    server = uvicorn.Server(server_config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while app.state.holder.service is None or not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.1)

        def fail(matrix: Any) -> Any:
            raise RuntimeError("the model cannot score this")

        service = app.state.holder.service
        monkeypatch.setattr(service.scorer, "predict", fail)
        monkeypatch.setattr(service.batcher, "predict", fail)  # the batcher holds the scorer's
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = orjson.dumps(registered["records"][0])
        answers = []
        for _ in range(3):
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answers.append((answer.status, answer.read()))
            time.sleep(0.2)  # the time a closed connection takes to be seen closed
        socket_used = connection.sock
        connection.request("GET", "/ready")
        assert connection.getresponse().status == 200
        assert connection.sock is socket_used
        assert [(status, orjson.loads(body)) for status, body in answers] == [
            (500, {"detail": "internal server error: the server failed to answer this request"})
        ] * 3
        assert "RuntimeError: the model cannot score this" in "".join(capfd.readouterr())  # the API's log
        metrics = connection_metrics(port)
        assert metrics[("POST", "/predict", "500")] >= 3
    finally:
        server.should_exit = True
        thread.join(30)


def connection_metrics(port: int) -> dict[tuple[str, str, str], float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.labels["method"], s.labels["path"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_requests_total"
    }
