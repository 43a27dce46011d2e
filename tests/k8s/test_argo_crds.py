"""The chart's Argo Rollouts objects against Argo Rollouts' own CRD schemas, at the version the project pins.

kubernetes-validate knows the core objects only. The Rollout and the AnalysisTemplates are validated here against
the ``openAPIV3Schema`` of the CRDs that Argo Rollouts publishes (``tests/fixtures/argo-rollouts-<version>/``, for
the Makefile's ``ARGO_ROLLOUTS_VERSION``), read as the API server reads them, and stricter in one way: a field the
schema does not know fails here, where the API server would drop it without a word (the CRDs prune unknown fields),
so a misspelled canary step or analysis setting would never reach the controller.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from standins.render import render as render_chart
from tests.k8s.test_chart import CHART, ENVIRONMENT_VALUES, RELEASE, VALUE_SETS, kinds, render

ROOT = Path(__file__).resolve().parents[2]
#: The kinds validated here, by the CRD file that defines each.
CRD_FILES = {"Rollout": "rollout-crd.yaml", "AnalysisTemplate": "analysis-template-crd.yaml"}


def pinned_version() -> str:
    """The Argo Rollouts version the kind cluster installs (the Makefile's pin)."""
    found = re.search(r"^ARGO_ROLLOUTS_VERSION := (v\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert found, "the Makefile pins no ARGO_ROLLOUTS_VERSION"
    return found.group(1)


def crd_folder() -> Path:
    return ROOT / "tests" / "fixtures" / f"argo-rollouts-{pinned_version()}"


def strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a JSON schema: Kubernetes' extensions read as the API server reads them
    (an int-or-string, a nullable field, an object that keeps unknown fields), and every other object closed."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    if "properties" in converted:
        converted["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    if schema.get("x-kubernetes-int-or-string"):
        converted.pop("type", None)
        converted["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if converted.pop("nullable", False) and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    if schema.get("type") == "object" and "properties" in schema and not open_ended:
        converted["additionalProperties"] = False
    return converted


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((crd_folder() / CRD_FILES[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def argo_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in CRD_FILES]


def problems(obj: dict[str, Any]) -> list[str]:
    found = validator(obj["kind"]).iter_errors(obj)
    return [f"{obj['kind']} {obj['metadata']['name']}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in found]  # fmt: skip


def test_the_crds_are_those_of_the_pinned_version_with_their_licence() -> None:
    folder = crd_folder()
    assert folder.is_dir(), f"no CRDs for Argo Rollouts {pinned_version()}: fetch them into {folder}"
    assert "Apache License" in (folder / "LICENSE").read_text()
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((folder / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    assert pinned_version() in (ROOT / "tests" / "fixtures" / "README.md").read_text()


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_argo_object_the_chart_renders_validates_against_argos_crds(name: str) -> None:
    objects = argo_objects(render(VALUE_SETS[name]))
    if VALUE_SETS[name].get("workload", {}).get("kind") != "deployment":
        assert {obj["kind"] for obj in objects} == set(CRD_FILES)
    assert [p for obj in objects for p in problems(obj)] == []


@pytest.mark.parametrize("strategy", ["canary", "blueGreen"])
def test_an_armed_champion_check_validates_against_argos_crds(strategy: str) -> None:
    values = {
        "workload": {"strategy": strategy},
        "model": {"uri": "models:/card-fraud-detector/7"},
        "championCheck": {"alias": "champion", "expectedVersion": "6", "revision": 3},
    }
    objects = argo_objects(render(values, revision=3))
    templates = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "AnalysisTemplate"]
    assert any(name.endswith("-champion") for name in templates), templates
    assert [p for obj in objects for p in problems(obj)] == []


@pytest.mark.parametrize("values_file", ENVIRONMENT_VALUES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_values_file_renders_argo_objects_that_validate(values_file: Path) -> None:
    values = yaml.safe_load(values_file.read_text()) or {}
    objects = render_chart(CHART, values, release=RELEASE.name, namespace=RELEASE.namespace)
    assert [p for obj in argo_objects(objects) for p in problems(obj)] == []


def test_a_field_argo_does_not_know_or_a_value_of_the_wrong_type_fails() -> None:
    """What the API server would prune or refuse: a misspelled step, a weight given as a word."""
    rollout = kinds(render())["Rollout"][0]
    misspelled = yaml.safe_load(yaml.safe_dump(rollout))
    misspelled["spec"]["strategy"]["canary"]["steps"][0]["setWieght"] = 10
    assert any("setWieght" in p for p in problems(misspelled)), problems(misspelled)
    wordy = yaml.safe_load(yaml.safe_dump(rollout))
    step = next(s for s in wordy["spec"]["strategy"]["canary"]["steps"] if "setWeight" in s)
    step["setWeight"] = "ten"
    assert any("setWeight" in p for p in problems(wordy)), problems(wordy)
