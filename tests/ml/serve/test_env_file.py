"""The API's environment file (``SERVE_ENV_FILE``): what Vault's Agent injector renders from the chart's template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.serve.settings import ENV_FILE_VARIABLE, Settings, load_env_file


def rendered(secret: dict[str, str]) -> str:
    """What the chart's agent template renders: a line ``KEY=<the value as JSON>`` per key of the secret."""
    return "".join(f"\n{key}={json.dumps(value)}" for key, value in secret.items())


def test_the_secrets_become_environment_variables_before_the_settings_are_read(
    monkeypatch, tmp_path: Path
) -> None:
    secret = {
        "SERVE_ADMIN_TOKEN": 'to"k=en #1',
        "AWS_ACCESS_KEY_ID": "AKIA000",
        "MLFLOW_TRACKING_TOKEN": "mlf\\tok",
    }
    path = tmp_path / "env"
    path.write_text(rendered(secret))
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(path))
    monkeypatch.setenv("SERVE_MODEL_URI", "models:/m@champion")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "set-by-the-pod")  # what is already set wins
    for key in ("SERVE_ADMIN_TOKEN", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert load_env_file() == sorted(secret)
    settings = Settings()  # type: ignore[call-arg]
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == 'to"k=en #1'
    import os

    assert (
        os.environ["MLFLOW_TRACKING_TOKEN"] == "mlf\\tok"
        and os.environ["AWS_ACCESS_KEY_ID"] == "set-by-the-pod"
    )


def test_a_named_file_that_is_missing_stops_the_start(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(tmp_path / "not-rendered"))
    with pytest.raises(SystemExit, match="no such file"):
        load_env_file()
    monkeypatch.delenv(ENV_FILE_VARIABLE)
    assert load_env_file() == []
