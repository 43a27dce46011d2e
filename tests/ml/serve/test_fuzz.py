"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis, in-process): no 5xx, ever.

Valid bodies come from the published schema of the loaded model's records; schemathesis also generates
requests that break the schema (wrong types, missing and extra fields), which must get a 4xx, not a 5xx.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from tests.ml.serve.test_app import client, registered  # noqa: F401 - fixtures shared with the API tests


def test_no_request_gets_a_5xx(client: Any) -> None:  # noqa: F811 - the fixture imported above
    document = client.get("/openapi.json").json()
    assert "requestBody" in document["paths"]["/predict"]["post"], (
        "the body schema appears once the model loads"
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /predict", "GET /ready"}
    seen: dict[int, int] = {}
    for operation in operations:
        # Only a declared body can be broken; operations without input have no negative cases.
        has_body = "requestBody" in document["paths"][operation.path][operation.method.lower()]
        for mode in (
            (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_body else (GenerationMode.POSITIVE,)
        ):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                response = case.call()
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, (
                    f"{case.method} {case.path} {case.body!r} -> {response.text}"
                )

            check()
    assert 200 in seen and 422 in seen, seen  # the fuzzer reached both valid and invalid bodies
