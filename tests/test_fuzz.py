"""API fuzzing (schemathesis) against the real server's OpenAPI page (``/docs.json``): every
operation, a fixed number of derandomized examples each (bounded: ~2 minutes on 2 cores).

Fails on any 5xx, any error answer that is not Podium's JSON ``{"error": ...}``, any status the
operation does not document and any body that breaks its documented schema. Every operation is
fuzzed, /admin included (without a configured token it must answer 403 in JSON, never fail).
Valid and invalid data (schemathesis' positive and negative modes); where the URL names a
model, also each served model, so fuzzed bodies reach the decoders.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.launch import Server

SERVED = ("diabetes", "mnist-fc", "mnist-cnn", "mnist-googlenet", "mnist-resnet", "char-rnn")
EXAMPLES_PER_OPERATION = 50
FUZZ = settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@schemathesis.check
def json_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is JSON with an "error" string (the framework's plain-text 404/405
    included)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return True


CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, json_error_body]


def _cases(operation: Any, served: dict[str, str]) -> st.SearchStrategy:
    """Valid and invalid requests for ``operation``; where the path names a model (and a
    version), also each served model (and its version), so fuzzed bodies reach the decoders and
    not only the 404 of an unknown name."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
    params = {p.name for p in operation.path_parameters}
    if "name" in params:
        strategies += [operation.as_strategy(path_parameters={"name": model, "version": version}
                                             if "version" in params else {"name": model})
                       for model, version in served.items()]
    return st.one_of(strategies)


# A path segment the router cannot match (a newline in a model name) gets a JSON 404 from
# services/edge.py like every other framework answer.
def test_every_operation_survives_fuzzing(server: Server) -> None:
    with server.client() as c:
        served = {m["name"]: m["version"] for m in c.get("/v1/models").json()["models"]}
    assert set(served) == set(SERVED)
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, [op.label for op in operations]
    failures: dict[str, str] = {}
    for operation in operations:
        @FUZZ
        @given(_cases(operation, served))
        def fuzz(case: Any) -> None:
            case.call_and_validate(base_url=server.url, timeout=60, checks=CHECKS)

        try:
            fuzz()
        # Every operation is fuzzed; all failures are reported together. schemathesis raises a
        # FailureGroup, a BaseExceptionGroup.
        except (Exception, FailureGroup) as exc:
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
