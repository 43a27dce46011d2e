"""Loading a registered model once and scoring JSON records with it, without pandas on the hot path.

The model logged by ``ml.train`` is a scikit-learn pipeline: ``TabularEncoder`` then the estimator. The scorer
reuses both: the encoder's learnt categories become dictionaries, records become one float32 matrix, and the
estimator scores it (XGBoost predicts in place on NumPy). Scores equal the MLflow pyfunc's for the same rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import CANARY_FAILED, CANARY_PROMOTED, CANARY_VERDICT_TAG, THRESHOLD_TAG
from ml import tracking
from ml.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What the API tells clients about the model it serves."""

    name: str
    version: str
    uri: str
    threshold: float
    features: tuple[str, ...]
    categorical: tuple[str, ...]


class Scorer:
    """Score records (mappings of feature to value) with a trained pipeline.

    Args:
        pipeline: The fitted pipeline logged by the train stage (``encode`` then ``model``).
    """

    def __init__(self, pipeline: Any) -> None:
        encoder = pipeline.named_steps["encode"]
        self.features: tuple[str, ...] = tuple(encoder.features)
        self.categorical: tuple[str, ...] = tuple(encoder.categorical)
        self._codes = {
            column: {category: float(code) for code, category in enumerate(categories)}
            for column, categories in encoder.categories_.items()
        }
        #: Each categorical feature's categories, in the order of their codes.
        self.categories: dict[str, list[str]] = {column: list(codes) for column, codes in self._codes.items()}
        self._arrays: dict[str, Any] = {}
        estimator = pipeline.named_steps["model"]
        self._columns = [(column, self._codes.get(column)) for column in self.features]
        if hasattr(estimator, "get_booster"):
            # XGBoost: predict in place on the booster, skipping the scikit-learn wrapper's per-call checks
            # (about 100 us of a single record's 270 us), over the trees early stopping kept.
            booster, best = estimator.get_booster(), getattr(estimator, "best_iteration", None)
            rounds = (0, best + 1) if best is not None else (0, 0)
            # One thread: a request's rows are scored in the event loop's thread, and OpenMP's workers would
            # contend with it (and each other) for the cores the server's processes share. Measured on 2 cores:
            # one record 100 us against 290 us, 1,000 rows 1.5 ms against 2.0 ms.
            booster.set_param({"nthread": 1})
            self._predict = lambda x: booster.inplace_predict(x, iteration_range=rounds)
        elif _is_forest(estimator):
            # A random forest: the mean of its trees' probabilities, summed in the forest's own order (the scores
            # are the forest's to the last bit), on one thread and without the forest's pool of jobs and checks of
            # each tree's input, which the matrix (float32, the model's columns) needs none of. Measured on one
            # record of 30 features, 100 trees: 0.76 ms against the forest's 3.7 ms, and its 22 ms at the n_jobs=-1
            # it was trained with (a thread per core for every request).
            trees = estimator.estimators_
            self._predict = lambda x: _mean_of_trees(trees, x)[:, 1]
        else:
            # Another scikit-learn model on one thread too: trained with n_jobs=-1, it would start a thread per core
            # for every request.
            if "n_jobs" in estimator.get_params():
                estimator.set_params(n_jobs=1)
            self._predict = lambda x: estimator.predict_proba(x)[:, 1]

    def matrix(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode records as the model's float32 matrix; None (and unknown categories) become NaN."""
        matrix = np.empty((len(records), len(self._columns)), dtype=np.float32)
        nan = float("nan")
        for row, record in enumerate(records):
            values = matrix[row]
            for position, (column, codes) in enumerate(self._columns):
                value = record.get(column)
                if value is None:
                    values[position] = nan
                elif codes is None:
                    values[position] = value
                else:
                    values[position] = codes.get(str(value), nan)
        return matrix

    def codes(self, column: str, values: Sequence[str | None]) -> list[float]:
        """A categorical column's codes; None and unknown categories become NaN."""
        codes, nan = self._codes[column], float("nan")
        return [nan if value is None else codes.get(value, nan) for value in values]

    def category_array(self, column: str) -> Any:
        """A categorical column's categories as an Arrow array (for ``pyarrow.compute.index_in``)."""
        if column not in self._arrays:
            import pyarrow as pa

            self._arrays[column] = pa.array(self.categories[column], type=pa.string())
        return self._arrays[column]

    def scores(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The positive-class probability of each record."""
        return self.predict(self.matrix(records))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The positive-class probability of each row of an encoded matrix (see ``matrix``)."""
        return np.asarray(self._predict(matrix), dtype=np.float64)


def _is_forest(estimator: Any) -> bool:
    """A forest of classification trees over one target (whose probabilities are the mean of its trees')."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier) and estimator.n_outputs_ == 1


def _mean_of_trees(trees: Sequence[Any], matrix: np.ndarray) -> np.ndarray:
    """What ``predict_proba`` of the forest of ``trees`` gives for ``matrix``, summed in the same order."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)  # what the forest's own check would make of it
    total = np.zeros((len(matrix), trees[0].n_classes_), dtype=np.float64)
    for tree in trees:
        total += tree.predict_proba(matrix, check_input=False)
    total /= len(trees)
    return total


#: Written next to an exported model's MLmodel file: the name, version and threshold that travel with it.
EXPORT_FILE = "mlops.json"


class Unreleased(StageError):
    """The production alias points at a version whose canary did not promote it (the alias was moved by hand)."""


def check_released(name: str, alias: str, version: Any) -> None:
    """Refuse the version ``name@alias`` points at unless its canary verdict is ``promoted``."""
    verdict = version.tags.get(CANARY_VERDICT_TAG)
    if verdict == CANARY_PROMOTED:
        return
    recorded = f"canary verdict is {verdict!r}" if verdict else "canary has no verdict"
    raise Unreleased(
        f"refusing to serve {name}@{alias}: it points at v{version.version}, whose {recorded} "
        f"({CANARY_VERDICT_TAG}), not {CANARY_PROMOTED!r}; was the alias moved by hand? Serve it anyway with "
        "SERVE_ALLOW_UNRELEASED=true"
    )


def check_not_failed(name: str, alias: str, version: Any) -> None:
    """Refuse the version any other alias points at if its release failed (its canary was aborted, or the release
    refused): the candidate alias stays on such a version until the next release moves it."""
    verdict = version.tags.get(CANARY_VERDICT_TAG)
    if verdict in CANARY_FAILED:
        raise Unreleased(
            f"refusing to serve {name}@{alias}: it points at v{version.version}, whose release was {verdict} "
            f"({CANARY_VERDICT_TAG}); serve it anyway with SERVE_ALLOW_UNRELEASED=true"
        )


def resolve(model_uri: str, released_alias: str | None = None) -> tuple[str, str, float, str]:
    """Return (name, version, decision threshold, URI to load) for a model reference.

    Accepts ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>`` (the threshold
    of the run's evaluation) and a local folder written by ``python -m ml.serve.export``. When the alias is
    ``released_alias`` (the production alias), the version must carry the canary verdict ``promoted``; under any
    other alias, not a failed release's verdict (``released_alias`` None: neither is checked).
    """
    if model_uri.startswith("models:/"):
        reference = model_uri.removeprefix("models:/")
        client = tracking.client()
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            if alias == released_alias:
                check_released(name, alias, version)
            elif released_alias is not None:
                check_not_failed(name, alias, version)
        elif "/" in reference:
            name, number = reference.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise StageError(f"model URI {model_uri!r} names no alias or version")
        threshold = version.tags.get(THRESHOLD_TAG)
        where = f"{name} v{version.version}"
        # What was resolved is what is loaded, even if the alias moves meanwhile.
        name, number, pinned = name, str(version.version), f"models:/{name}/{version.version}"
    elif model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        threshold = tracking.client().get_run(run_id).data.tags.get(THRESHOLD_TAG)
        where, name, number, pinned = f"run {run_id}", f"run-{run_id}", run_id, model_uri
    else:
        exported = Path(model_uri) / EXPORT_FILE
        if not exported.exists():
            raise StageError(
                f"{model_uri!r} is not a models:/ or runs:/ URI, nor a folder exported by ml.serve.export"
            )
        meta = json.loads(exported.read_text())
        threshold, where, name, number, pinned = (
            meta["threshold"],
            model_uri,
            meta["name"],
            meta["version"],
            model_uri,
        )
    if threshold is None:
        raise StageError(f"{where} has no {THRESHOLD_TAG}: was it evaluated by the pipeline?")
    return name, number, float(threshold), pinned


def load(model_uri: str, released_alias: str | None = None) -> tuple[ModelCard, Scorer]:
    """Load a model with the decision threshold its evaluation chose (``released_alias``: see ``resolve``)."""
    name, version, threshold, pinned = resolve(model_uri, released_alias)
    scorer = Scorer(tracking.load_model(pinned))
    card = ModelCard(
        name=name,
        version=version,
        uri=pinned,
        threshold=threshold,
        features=scorer.features,
        categorical=scorer.categorical,
    )
    log.info("loaded %s v%s (%d features, threshold %.4f)", name, version, len(card.features), threshold)
    return card, scorer
