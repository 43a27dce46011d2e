"""The inference API's configuration: the one place it reads its environment."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the API reads from its environment (prefix ``SERVE_``)."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", protected_namespaces=())

    model_uri: str
    max_batch_size: int = 1000
    max_body_bytes: int = 2_000_000
    tracing: bool = False
    # Bearer token for POST /reload; unset (the default) turns reloading over HTTP off.
    admin_token: SecretStr | None = None
