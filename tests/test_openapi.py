"""``GET /ai/v1/openapi.json`` is a valid OpenAPI 3.1 document that tells the truth about the gateway.

Valid: it passes the OpenAPI 3.1 meta-schema (schemathesis carries it) and every schema in it is
JSON Schema 2020-12. Complete: every route the app serves under ``/ai/v1`` is documented and
nothing else is. True: schemathesis generates requests from the document and sends them to a
running gateway; no answer may be a server error, and every answer's status, content type and
body must be what the document says for that operation.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from api.app import create_app
from api.openapi import REF
from api.openapi import document as openapi_document
from shared.config import Settings
from shared.wire import ChatRequest, EmbeddingsRequest

API_PREFIX = "/ai/v1"
# Models the test gateway serves, put into some generated requests so that answers other than
# "no such model" get checked too.
SERVED_MODELS = {"/chat/completions": "mock-local", "/responses": "mock-local", "/messages": "mock-local",
                 "/messages/count_tokens": "mock-local", "/embeddings": "mock-embed"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12


@pytest.fixture(scope="module")
def document(gateway) -> dict[str, Any]:
    response = httpx.get(f"{gateway.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"components.schemas.{name} is not JSON Schema 2020-12: {exc}")


def test_document_is_public_and_names_its_security(gateway, document):
    assert httpx.get(f"{gateway.base_url}/openapi.json", headers={"Authorization": "Bearer nope"}).status_code == 200
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/health"]["get"]["security"] == []


def test_errors_reference_the_envelopes(document):
    responses = document["components"]["responses"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if (path, status) == ("/health", "503"):
                    continue  # an unhealthy gateway still answers with its health report
                if status.startswith(("4", "5")) or status == "default":
                    name = answer["$ref"].rsplit("/", 1)[1]
                    envelope = "AnthropicError" if path.startswith("/messages") else "ErrorEnvelope"
                    schema = responses[name]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{envelope}"}, (path, method, status)


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_documented(document):
    app = create_app(Settings())
    served = {(_shape(route.path.removeprefix(API_PREFIX)), method.lower())
              for route in app.routes if route.path.startswith(API_PREFIX + "/")
              for method in route.methods if method != "HEAD"}
    documented = {(_shape(path), method) for path, operations in document["paths"].items() for method in operations}
    assert served == documented


def test_request_schemas_are_the_validation_structs(document):
    """The chat and embeddings schemas served are msgspec's view of the very Structs the front door
    validates with, so the document cannot drift from the validation."""
    _, components = msgspec.json.schema_components((ChatRequest, EmbeddingsRequest), ref_template=REF)
    for name, schema in components.items():
        assert document["components"]["schemas"][name] == schema, name


def _without_directives(value: Any) -> Any:
    """The mock upstreams obey ``#`` directives in prompts (errors, hangs); generated text must not."""
    if isinstance(value, str):
        return value.replace("#", "")
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items()}
    return value


OPERATIONS = [(path, method) for path, operations in openapi_document()["paths"].items() for method in operations]


@pytest.fixture(scope="module")
def live_schema(gateway):
    return schemathesis.openapi.from_url(f"{gateway.base_url}/openapi.json")


# Operations with nothing a client could get wrong (no parameters, no body) have no negative cases.
REFUSABLE = [(path, method) for path, method in OPERATIONS if (path, method) not in {("/health", "get"),
                                                                                      ("/openapi.json", "get")}]


def _run(gateway, live_schema, path: str, method: str, mode: GenerationMode, checks: list) -> None:
    operation = live_schema[path][method.upper()]
    headers = {"Authorization": f"Bearer {gateway.token('user_openapi')}"}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def check(case, data):
        if isinstance(case.body, dict):
            body = _without_directives(case.body)
            model = SERVED_MODELS.get(path)
            if mode == GenerationMode.POSITIVE and model and data.draw(st.booleans(), label="served model"):
                body["model"] = model
            case.body = body
        response = case.call_and_validate(headers=headers, checks=checks, timeout=30)
        event(f"status {response.status_code}")

    check()


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_live_gateway_conforms(gateway, live_schema, path, method):
    """Requests the document allows: never a server error, and answers as documented."""
    _run(gateway, live_schema, path, method, GenerationMode.POSITIVE, CHECKS)


@pytest.mark.parametrize("path, method", REFUSABLE, ids=[f"{m.upper()} {p}" for p, m in REFUSABLE])
def test_live_gateway_refuses_what_the_document_forbids(gateway, live_schema, path, method):
    """Requests the document does not allow are refused with a documented client error."""
    _run(gateway, live_schema, path, method, GenerationMode.NEGATIVE, [*CHECKS, negative_data_rejection])
