"""Serve a registered model with the inference API on this machine.

    python -m scripts.serve --alias champion --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d @record.json

The registered model's name comes from plugins/mlops/platform.yaml; MLFLOW_TRACKING_URI points at the registry.
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from mlops.platform_config import load_platform


def main() -> None:
    registry = load_platform().registry
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alias", default=registry["production_alias"], help="registry alias to serve")
    parser.add_argument("--model-uri", help="serve this models:/ URI instead of <model name>@<alias>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["SERVE_MODEL_URI"] = args.model_uri or f"models:/{registry['model_name']}@{args.alias}"
    uvicorn.run(
        "ml.serve.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
