"""The API against its own OpenAPI document, through nginx and gunicorn: schemathesis writes the requests."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PASSWORD, get, unique_email

pytestmark = pytest.mark.e2e
EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def live_schema(web_tier: str) -> Any:
    return schemathesis.openapi.from_url(f"{web_tier}/api/openapi.json")


@pytest.fixture
def token(web_tier: str) -> str:
    email = unique_email()
    post_json(f"{web_tier}/api/auth/signup", {"email": email, "password": PASSWORD, "password_confirm": PASSWORD})
    return post_json(f"{web_tier}/api/auth/login", {"email": email, "password": PASSWORD})["access_token"]


def test_every_route_answers_as_documented(live_schema: Any, token: str) -> None:
    """Positive and negative cases for every operation: no 5xx, and status, type and body as documented.

    (schemathesis's pytest plugin can't take a schema from a fixture under pytest 9, so the
    operations are walked here, each with hypothesis.)
    """
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        answers_as_documented()


def test_the_document_and_its_docs_page(web_tier: str) -> None:
    status, body, _ = get(f"{web_tier}/api/openapi.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"].startswith("3.")
    upload = document["paths"]["/api/videos/upload"]["post"]
    assert {"400", "401", "413", "415", "422", "429", "503"} <= set(upload["responses"])
    assert "multipart/form-data" in upload["requestBody"]["content"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/") and method in ("get", "post", "delete"):
                assert any(code.startswith("4") for code in operation["responses"]), f"{method} {path}"
    with urllib.request.urlopen(f"{web_tier}/api/docs", timeout=10) as response:
        page, policy = response.read(), response.headers["Content-Security-Policy"]
    assert b"swagger-ui" in page and "script-src 'self'" in policy
    status, script, _ = get(f"{web_tier}/api/docs/assets/swagger-ui-bundle.js")
    assert status == 200 and len(script) > 100_000, "Swagger UI is served by the app, not fetched from elsewhere"
