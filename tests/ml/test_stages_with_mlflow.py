"""The train, evaluate and register stages against a real MLflow server on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from mlflow import MlflowClient

from contract import (
    CHAMPION_COMPARISON_TAG,
    INCOMPARABLE_CHAMPION_ACCEPTED_TAG,
    INTERVAL_TAG,
    LEAKAGE_FLAGS_TAG,
    RELEASE_REASON_TAG,
    RELEASE_SKIPPED,
    RELEASE_TAG,
    RUN_KEY_TAG,
    STARTED_BY_TAG,
)
from ml import tracking
from ml.compare import Rule
from ml.errors import StageError
from ml.evaluate import ChampionUnavailable, evaluate
from ml.prepare import prepare
from ml.register import register
from ml.storage import read_manifest, read_published_table
from ml.train import ROUND_METRIC, main, train
from tests.helpers import (
    CHALLENGER,
    CHAMPION,
    artifact_folder,
    every_and_last,
    progress_lines,
    register_evaluated,
    train_arguments,
    train_config,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("prepared") / "interval"
    prepare("synthetic://card-transactions?rows=30000&seed=5", "is_fraud", str(out), time_column="timestamp",
            drop_columns=["transaction_id"])  # fmt: skip
    return str(out)


def test_a_repeat_with_the_same_inputs_reuses_the_model_and_other_inputs_supersede(
    mlflow_server, prepared
) -> None:
    config = train_config(n_estimators=40)
    first = train(prepared, config, experiment="stages", run_key="dag/run-a")
    again = train(prepared, config, experiment="stages", run_key="dag/run-a")
    assert (again.reused, again.model_id, again.run_id) == (True, first.model_id, first.run_id)

    changed = train(prepared, train_config(n_estimators=41), experiment="stages", run_key="dag/run-a")
    assert not changed.reused and changed.run_id != first.run_id
    old = MlflowClient().get_run(first.run_id)
    assert old.data.tags[RUN_KEY_TAG].startswith("dag/run-a#superseded-")
    run = MlflowClient().get_run(changed.run_id)
    assert run.data.params["device_used"] == "cpu"
    assert len(MlflowClient().get_metric_history(changed.run_id, ROUND_METRIC)) > 1
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"train", "validation"}


def test_the_model_carries_only_its_own_code_and_loads_outside_the_repository(
    trained_model, tmp_path
) -> None:
    """The logged model's code is the encoder's module and its package, not the platform's; with only that, an
    interpreter outside this repository (no PYTHONPATH) loads the model from its folder and scores its example."""
    import mlflow.artifacts

    folder = Path(
        mlflow.artifacts.download_artifacts(trained_model["trained"].model_uri, dst_path=str(tmp_path))
    )
    code = folder / "code"
    assert sorted(path.relative_to(code).as_posix() for path in code.rglob("*.py")) == [
        "ml/__init__.py",
        "ml/features.py",
    ]
    script = (
        "import sys; import mlflow.pyfunc; from mlflow.models import Model; "
        "path = sys.argv[1]; model = mlflow.pyfunc.load_model(path); "
        "scores = model.predict(Model.load(path).load_input_example(path)); "
        "import ml; print(ml.__file__, len(scores))"
    )
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    loaded = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    ml_file, scored = loaded.stdout.split()[-2:]
    assert Path(ml_file).is_relative_to(code) and int(scored) == 5


def test_logging_or_loading_a_model_leaves_the_import_path_as_it_was(mlflow_server, prepared) -> None:
    """MLflow puts a model's code folder first on ``sys.path``, for good, when it loads the model (logging one loads
    it too). Processes started afterwards inherit the path: a Dask LocalCluster's spawned workers imported ``ml``
    from the model's copy (the encoder only), found no ``ml.distributed`` and never ran a task."""
    before = list(sys.path)
    uri = train(
        prepared, train_config(n_estimators=5), experiment="stages", run_key="dag/import-path"
    ).model_uri
    assert tracking.load_model(uri).predict_proba is not None
    assert tracking.load_model(uri, pyfunc=True).predict is not None
    assert sys.path == before


def test_the_splits_lineage_comes_from_the_manifest_not_a_pass_over_the_rows(mlflow_server, prepared) -> None:
    trained = train(prepared, train_config(n_estimators=20), experiment="stages", run_key="dag/lineage")
    manifest = read_manifest(prepared)
    inputs = {i.dataset.name: i for i in MlflowClient().get_run(trained.run_id).inputs.dataset_inputs}
    for name in ("train", "validation"):
        dataset = inputs[name].dataset
        assert json.loads(dataset.profile) == {
            "rows": manifest["rows"][name],
            "positives": manifest["positives"][name],
            "time_range": manifest["time_ranges"][name],
        }
        assert dataset.digest == f"{manifest['digest'][:16]}-{name}"
        assert json.loads(dataset.source)["uri"].endswith(f"{name}.parquet")
        # The columns and their types, read from a sample.
        assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == list(
            read_published_table(prepared, f"{name}.parquet").columns
        )
    assert {t.value for i in inputs.values() for t in i.tags if t.key == "mlflow.data.context"} == {
        "training", "validation",
    }  # fmt: skip


@pytest.mark.parametrize("refit", [True, False])
def test_progress_shows_in_the_log_and_the_learning_curve_in_mlflow_as_it_trains_each_round_once(
    mlflow_server, prepared, caplog: pytest.LogCaptureFixture, refit: bool
) -> None:
    import mlflow

    caplog.set_level(logging.INFO, logger="ml.train")
    config = train_config(n_estimators=60, refit=refit)
    result = main([
        "--prepared-uri", prepared, "--experiment", "stages", "--run-key", f"dag/run-progress-{refit}",
        *train_arguments(n_estimators=60, refit=refit), "--progress-every", "7",
    ])  # fmt: skip
    rounds = min(result["best_iteration"] + 1 + config.early_stopping_rounds, config.n_estimators)
    history = MlflowClient().get_metric_history(result["run_id"], ROUND_METRIC)
    # Each round once: no gap, none twice.
    assert sorted(point.step for point in history) == list(range(rounds))
    curve = {point.step: point.value for point in history}
    lines = progress_lines(caplog.text, "train")
    assert [int(line["round"]) for line in lines] == every_and_last(7, rounds)
    assert all(line["value"] == f"{curve[int(line['round']) - 1]:.4f}" for line in lines)
    refits = [int(line["round"]) for line in progress_lines(caplog.text, "refit")]
    assert refits == (every_and_last(7, result["refit_rounds"]) if refit else [])
    mlflow.pyfunc.load_model(result["model_uri"])  # the logged model did not keep the callback


def test_register_once_per_run_key_and_refuse_a_failed_evaluation(mlflow_server, prepared) -> None:
    trained = train(prepared, train_config(n_estimators=40), experiment="stages", run_key="dag/run-b")
    evaluation = asdict(
        evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name="stage-model",
                 min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION)
    )  # fmt: skip
    assert evaluation["decision"] == "pass"
    artifacts = {a.path for a in MlflowClient().list_artifacts(trained.run_id, "plots")}
    assert artifacts == {
        f"plots/{n}.png"
        for n in ("precision_recall_curve", "confusion_matrix", "feature_importance", "threshold_tradeoff",
                  "score_distribution", "calibration")
    }  # fmt: skip

    first = register(evaluation, run_key="dag/run-b", alias=CHALLENGER)
    second = register(evaluation, run_key="dag/run-b", alias=CHALLENGER)
    assert first.newly_registered and not second.newly_registered
    assert first.version == second.version
    client = MlflowClient()
    assert len(client.search_model_versions("name = 'stage-model'")) == 1
    assert client.get_model_version_by_alias("stage-model", CHALLENGER).version == first.version

    failed = {**evaluation, "decision": "fail", "reasons": ["average precision 0.1 < minimum 0.3"]}
    with pytest.raises(StageError, match="decided 'fail', not 'pass'; refusing to register"):
        register(failed, run_key="dag/run-c", alias=CHALLENGER)
    with pytest.raises(StageError, match=r"evaluation result is incomplete: missing \['model_uri'"):
        register({"decision": "pass"}, run_key="dag/run-c", alias=CHALLENGER)
    other_model = {**evaluation, "model_id": "m-other"}
    with pytest.raises(StageError, match="one DAG run registers one version"):
        register(other_model, run_key="dag/run-b", alias=CHALLENGER)
    assert len(client.search_model_versions("name = 'stage-model'")) == 1

    # What the model learnt from although the leakage guard found something is on its version.
    flags = {"review_flag": "NEAR COPY OF THE LABEL? alone it ranks the classes with ROC-AUC 0.960"}
    flagged = register({**evaluation, "leakage_flags": flags}, run_key="dag/run-d", alias=CHALLENGER)
    tags = client.get_model_version("stage-model", flagged.version).tags
    assert json.loads(tags[LEAKAGE_FLAGS_TAG]) == flags
    assert LEAKAGE_FLAGS_TAG not in client.get_model_version("stage-model", first.version).tags


def test_a_model_never_registered_has_no_champion_though_the_auth_app_refuses_its_alias(
    mlflow_server,
) -> None:
    """MLflow's basic-auth app answers an alias of a model that does not exist with 403, not 404: evaluate's
    first run for a new model must still see "no champion", not a failing registry."""
    from mlflow.exceptions import MlflowException

    from ml import tracking

    with pytest.raises(MlflowException, match="403"):
        MlflowClient().get_model_version_by_alias("never-registered", CHAMPION)
    assert tracking.alias_version("never-registered", CHAMPION) is None


def test_evaluation_compares_with_the_champion_on_the_same_rows(
    mlflow_server, prepared, tmp_path: Path
) -> None:
    trained = train(prepared, train_config(n_estimators=60), experiment="stages", run_key="dag/run-d")
    result, version = register_evaluated(prepared, trained, "champ-model", "dag/run-d")
    MlflowClient().set_registered_model_alias("champ-model", CHAMPION, version)

    weaker = train(
        prepared, train_config(n_estimators=2, max_depth=1), experiment="stages", run_key="dag/run-e"
    )
    compared = evaluate(prepared, weaker.model_uri, weaker.run_id, registered_model_name="champ-model",
                        min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    assert compared.champion.version == version and compared.champion.comparable
    assert compared.champion.metrics.average_precision == pytest.approx(result.metrics.average_precision)
    assert compared.decision == "fail"
    # The interval of the difference decides, and is shown: in the reason, the card, the run and its plot.
    interval = compared.comparison["average_precision"]
    assert interval["low"] <= interval["estimate"] <= interval["high"] < 0
    assert interval["estimate"] == pytest.approx(
        compared.metrics.average_precision - result.metrics.average_precision, abs=1e-9
    )
    assert compared.comparison["unit"] == "rows" and compared.comparison["resamples"] == 1000
    assert any(f"against champion v{version}" in r and "95 % interval" in r and "superior: lower bound" in r
               for r in compared.reasons), compared.reasons  # fmt: skip
    card = Path(MlflowClient().download_artifacts(weaker.run_id, "model_card.md", str(tmp_path))).read_text()
    assert "**Decision: FAIL**" in card and "## Against the champion (paired bootstrap)" in card
    assert compared.comparison["described"] in card and "**fail**" in card
    run = MlflowClient().get_run(weaker.run_id)
    assert run.data.metrics["champion_difference_average_precision_low"] == pytest.approx(interval["low"])
    assert run.data.tags[CHAMPION_COMPARISON_TAG].startswith(compared.comparison["described"])
    assert "plots/champion_comparison.png" in {
        a.path for a in MlflowClient().list_artifacts(weaker.run_id, "plots")
    }

    # The same weaker model from a backfill: registered for the record, tagged, and not the challenger.
    plan = {
        "release": False,
        "reason": "a backfill run",
        "interval": ["2026-03-02T00:00:00", "2026-03-09T00:00:00"],
        "started_by": "a backfill",
    }
    record = evaluate(prepared, weaker.model_uri, weaker.run_id, registered_model_name="champ-model",
                      min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION, plan=plan)  # fmt: skip
    assert record.decision == "pass"
    registered = register(asdict(record), run_key="dag/run-e", alias=CHALLENGER)
    assert registered.alias is None and registered.release == plan
    tags = MlflowClient().get_model_version("champ-model", registered.version).tags
    assert (
        tags[CHAMPION_COMPARISON_TAG] == f"{record.comparison['described']}; {record.comparison['verdict']}"
    )
    assert tags[RELEASE_TAG] == RELEASE_SKIPPED and tags[RELEASE_REASON_TAG] == "a backfill run"
    assert tags[INTERVAL_TAG] == "2026-03-02T00:00:00/2026-03-09T00:00:00"
    assert tags[STARTED_BY_TAG] == "a backfill"
    assert MlflowClient().get_model_version_by_alias("champ-model", CHALLENGER).version == version


def test_the_random_forest_baseline_is_logged_and_scored_through_mlflow(mlflow_server, prepared) -> None:
    trained = train(
        prepared, train_config(model_type="random_forest"), experiment="stages", run_key="dag/run-rf"
    )
    assert trained.best_iteration is None
    result = evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name="rf-model",
                      min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    assert result.metrics.average_precision > 0.05


def test_the_gate_fails_closed_on_a_champion_that_cannot_score_the_test_rows(
    mlflow_server, prepared, tmp_path: Path
) -> None:
    """A champion trained with `amount`; the candidate's data has none: no comparison, so no pass, unless the
    run accepts it, which the version and the model card then say."""
    champion = train(prepared, train_config(n_estimators=20), experiment="stages", run_key="dag/schema-1")
    first = evaluate(prepared, champion.model_uri, champion.run_id, registered_model_name="schema-model",
                     min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    MlflowClient().set_registered_model_alias(
        "schema-model", CHAMPION, register(asdict(first), run_key="dag/schema-1", alias=CHALLENGER).version
    )
    without_amount = str(tmp_path / "without-amount")
    prepare("synthetic://card-transactions?rows=30000&seed=5", "is_fraud", without_amount, time_column="timestamp",
            drop_columns=["transaction_id", "amount"])  # fmt: skip
    candidate = train(
        without_amount, train_config(n_estimators=20), experiment="stages", run_key="dag/schema-2"
    )
    arguments = dict(registered_model_name="schema-model", min_average_precision=0.0, rule=Rule("superior", -1.0, 0.0),
                     champion_alias=CHAMPION)  # fmt: skip

    refused = evaluate(without_amount, candidate.model_uri, candidate.run_id, **arguments)
    assert refused.decision == "fail" and not refused.champion.comparable
    assert any("cannot score the test rows" in r and "amount" in r for r in refused.reasons), refused.reasons

    accepted = evaluate(without_amount, candidate.model_uri, candidate.run_id, **arguments,
                        accept_incomparable_champion=True)  # fmt: skip
    assert accepted.decision == "pass" and "amount" in accepted.incomparable_champion_accepted
    version = register(asdict(accepted), run_key="dag/schema-2", alias=CHALLENGER).version
    tags = MlflowClient().get_model_version("schema-model", version).tags
    assert "amount" in tags[INCOMPARABLE_CHAMPION_ACCEPTED_TAG]
    card = Path(
        MlflowClient().download_artifacts(candidate.run_id, "model_card.md", str(tmp_path))
    ).read_text()
    assert "**The run accepted a champion that could not be compared**" in card


def test_a_champion_whose_artifacts_cannot_be_read_is_an_error_not_a_decision(
    mlflow_server, prepared, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The artifact store loses the champion's files: evaluate raises (the stage exits 1 and is retried)."""
    trained = train(prepared, train_config(n_estimators=20), experiment="stages", run_key="dag/lost-1")
    _, version = register_evaluated(prepared, trained, "lost-model", "dag/lost-1")
    MlflowClient().set_registered_model_alias("lost-model", CHAMPION, version)
    stored = artifact_folder(trained.model_id, tmp_path_factory.getbasetemp())
    hidden = stored.with_name(stored.name + ".hidden")
    stored.rename(hidden)
    candidate = train(prepared, train_config(n_estimators=21), experiment="stages", run_key="dag/lost-2")
    try:
        with pytest.raises(ChampionUnavailable, match=f"champion lost-model v{version} could not be loaded"):
            evaluate(prepared, candidate.model_uri, candidate.run_id, registered_model_name="lost-model",
                     min_average_precision=0.0, rule=Rule("superior", -1.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    finally:
        hidden.rename(stored)
    assert not issubclass(ChampionUnavailable, StageError)  # exit 1, retried; not "rejected input"
    assert len(MlflowClient().search_model_versions("name = 'lost-model'")) == 1


def test_a_refit_model_is_thresholded_on_the_early_stopped_scores_and_the_card_says_which_model(
    mlflow_server, prepared
) -> None:
    from ml import tracking
    from ml.evaluate import choose_threshold, model_card

    trained = train(prepared, train_config(n_estimators=60), experiment="stages", run_key="dag/run-refit")
    assert trained.refit_rounds is not None and trained.refit_rounds > trained.best_iteration + 1
    validation = read_published_table(prepared, "validation.parquet")
    kept = tracking.early_stopped_validation_scores(trained.run_id, len(validation))
    assert kept is not None
    evaluation = evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name="refit-model",
                          min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0), champion_alias=CHAMPION)  # fmt: skip
    # Chosen on the rows the served model learnt from, the threshold would be another one.
    assert evaluation.metrics.threshold == choose_threshold(validation["is_fraud"].to_numpy(), kept)
    card = model_card(evaluation, read_manifest(prepared))
    assert (
        f"Served model: refit on the {len(validation) + len(read_published_table(prepared, 'train.parquet')):,}"
        in card
    )
    with pytest.raises(StageError, match="other prepared data"):
        tracking.early_stopped_validation_scores(trained.run_id, len(validation) + 1)
    # Flagged columns come first, before any metric, loudly; none, no warning.
    assert "leakage guard flagged" not in card
    flagged = {**read_manifest(prepared), "flagged_columns": {"review_flag": "NEAR COPY OF THE LABEL? ..."}}
    loud = model_card(evaluation, flagged)
    assert loud.index("**Warning: learnt from columns the leakage guard flagged.**") < loud.index(
        "## Test metrics"
    )
    assert "> - `review_flag`: NEAR COPY OF THE LABEL? ..." in loud
