"""A Terraform provider for tests: its "real infrastructure" is a folder of JSON files that tests edit.

Terraform's built-in provider cannot drift (``terraform_data`` reads back exactly its state), and no cloud
provider can be installed offline. This one speaks the real plugin protocol (through the ``tf`` framework), so
``terraform init`` installs it from a local mirror and a refresh reads whatever a test wrote into a file:
"changed outside Terraform" is an edited file, "deleted outside Terraform" a removed one.

Run by Terraform from the tools venv that ``make`` builds (its protobuf differs from the project's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tf import provider as p
from tf import schema, types
from tf.runner import run_provider

SOURCE = "example.test/fixtures/world"


class WorldProvider(p.Provider):
    def __init__(self) -> None:
        self.root = Path(".")

    def full_name(self) -> str:
        return SOURCE

    def get_model_prefix(self) -> str:
        return "world_"

    def get_provider_schema(self, diags: Any) -> schema.Schema:
        return schema.Schema(attributes=[schema.Attribute("root", types.String(), required=True)])

    def validate_config(self, diags: Any, config: dict[str, Any]) -> None:
        pass

    def configure_provider(self, diags: Any, config: dict[str, Any]) -> None:
        self.root = Path(config["root"])

    def get_data_sources(self) -> list[Any]:
        return []

    def get_resources(self) -> list[Any]:
        return [WorldObject]


class WorldObject(p.Resource):
    """An object of the fake world: a JSON file named after the object."""

    def __init__(self, provider: WorldProvider) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "object"

    @classmethod
    def get_schema(cls) -> schema.Schema:
        return schema.Schema(
            attributes=[
                schema.Attribute("id", types.String(), computed=True),
                schema.Attribute("name", types.String(), required=True, requires_replace=True),
                schema.Attribute("size", types.String(), optional=True),
                schema.Attribute("tags", types.Map(types.String()), optional=True),
                schema.Attribute("secret", types.String(), optional=True, sensitive=True),
            ]
        )

    def _file(self, name: str) -> Path:
        return self.provider.root / f"{name}.json"

    def _write(self, state: dict[str, Any]) -> dict[str, Any]:
        state = {**state, "id": state["name"]}
        self.provider.root.mkdir(parents=True, exist_ok=True)
        self._file(state["name"]).write_text(json.dumps(state))
        return state

    def create(self, ctx: Any, planned: dict[str, Any]) -> dict[str, Any]:
        return self._write(planned)

    def read(self, ctx: Any, current: dict[str, Any]) -> dict[str, Any] | None:
        path = self._file(current["name"])
        return json.loads(path.read_text()) if path.exists() else None

    def update(self, ctx: Any, current: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
        return self._write(planned)

    def delete(self, ctx: Any, current: dict[str, Any]) -> None:
        self._file(current["name"]).unlink(missing_ok=True)


if __name__ == "__main__":
    run_provider(WorldProvider())
