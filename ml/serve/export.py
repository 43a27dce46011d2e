"""Export a registered model version to a folder the API can serve without a tracking server.

    python -m ml.serve.export --model-uri models:/card-fraud-detector@champion --output /models/fraud

The folder holds the MLflow model and ``mlops.json`` (name, version, decision threshold), so the threshold that
evaluation chose travels with the model. Serve it with ``SERVE_MODEL_URI=/models/fraud``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.errors import StageError
from ml.runtime import ArgumentParser
from ml.serve.model import EXPORT_FILE, resolve
from ml.serve.settings import ServingRules
from ml.tracking import model_uri


def export(model_uri: str, output: Path, *, released_alias: str | None = None) -> dict[str, Any]:
    """Download the model behind ``model_uri`` into ``output`` (replaced whole) with its serving metadata; the
    version behind ``released_alias`` must carry the canary verdict ``promoted``, as the API checks."""
    import mlflow.artifacts

    if not model_uri.startswith(("models:/", "runs:/")):
        raise StageError(f"export takes a models:/ or runs:/ URI, not {model_uri!r}")
    name, version, threshold, pinned = resolve(model_uri, released_alias)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.partial-") as staging:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=staging))
        meta = {"name": name, "version": version, "threshold": threshold, "source": pinned}
        (folder / EXPORT_FILE).write_text(json.dumps(meta, indent=2))
        if output.exists():
            shutil.rmtree(output)
        folder.rename(output)
    return {**meta, "output": str(output)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.serve.export", doc=__doc__)
    parser.add_argument(
        "--model-uri",
        type=model_uri,
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<n> or runs:/",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder to write (replaced whole)")
    parser.add_argument(
        "--allow-unreleased",
        action="store_true",
        help="export the production alias even if its version has no 'promoted' canary verdict "
        "(SERVE_ALLOW_UNRELEASED=true says the same)",
    )
    args = parser.parse_args(argv)
    rules = ServingRules()  # the API's own rules, from the same SERVE_* environment
    unreleased_ok = args.allow_unreleased or rules.allow_unreleased
    return export(args.model_uri, args.output, released_alias=None if unreleased_ok else rules.champion_alias)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
