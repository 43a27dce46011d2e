"""Serve a registered model with the inference API on this machine.

    python -m scripts.serve --model card_fraud --alias champion --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d @record.json

The registered model's name comes from its model file (dags/models/<model>.yaml);
MLFLOW_TRACKING_URI points at the registry.
"""

from __future__ import annotations

import argparse
import os

from ml.serve.server import serve
from mlops.models import load_models
from mlops.platform_config import load_platform


def check(model_uri: str, model_name: str) -> None:
    """Fail before starting a server that could never become ready, and say what to serve instead."""
    from mlflow import MlflowClient

    from ml.serve.model import resolve
    from ml.serve.settings import Settings

    settings = Settings(model_uri=model_uri)
    try:
        resolve(model_uri, None if settings.allow_unreleased else settings.champion_alias)
    except Exception as err:  # any failure to resolve is reported the same way
        try:
            aliases = dict(MlflowClient().get_registered_model(model_name).aliases)
        except Exception:
            aliases = {}
        known = ", ".join(f"{alias} -> v{version}" for alias, version in sorted(aliases.items())) or "none"
        raise SystemExit(
            f"cannot serve {model_uri}: {str(err).splitlines()[0]}\n"
            f"aliases of {model_name}: {known}. The canary release promotes champion; until then serve the "
            "candidate with `make serve ALIAS=challenger`."
        ) from None


def main() -> None:
    registry = load_platform().registry
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the model file's key (needed when there are several)")
    parser.add_argument("--alias", default=registry.production_alias, help="registry alias to serve")
    parser.add_argument("--model-uri", help="serve this models:/ URI instead of <model name>@<alias>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    models = load_models()
    if args.model is None and len(models.models) != 1:
        raise SystemExit(f"which model? --model (make serve MODEL=...) one of {[m.key for m in models]}")
    name = (models.get(args.model) if args.model else models.models[0]).registered_model
    model_uri = args.model_uri or f"models:/{name}@{args.alias}"
    check(model_uri, name)
    os.environ["SERVE_MODEL_URI"] = model_uri
    serve(host=args.host, port=args.port, workers=args.workers)  # the limits: SERVE_* (ml/serve/settings.py)


if __name__ == "__main__":
    main()
