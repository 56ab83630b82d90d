"""The OpenAPI document is the contract: every route declares what it answers on success and
answers every error with the one `ErrorBody` schema."""

from typing import Any

from fastapi.testclient import TestClient

from rp9_pipelines.api.main import create_app

ERROR_BODY = "#/components/schemas/ErrorBody"
# Answers in 4xx/5xx that are not errors of the caller's (the probe's own body).
NOT_ERROR_BODIES = {("/readyz", "get", "503")}
UNAUTHENTICATED = {"/healthz", "/readyz", "/stripe/webhook"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    schema = create_app().openapi()
    return [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def schema_ref(response: dict[str, Any]) -> str | None:
    ref: str | None = (
        response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
    )
    return ref


def test_every_route_declares_a_response_model() -> None:
    assert len(operations()) >= 18
    for path, method, operation in operations():
        answers = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
        assert len(answers) == 1, (method, path, answers)
        (response,) = answers.values()
        assert schema_ref(response), f"{method} {path} declares no response model"


def test_every_error_a_route_declares_is_an_error_body() -> None:
    for path, method, operation in operations():
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        for status, response in errors.items():
            if (path, method, status) not in NOT_ERROR_BODIES:
                assert schema_ref(response) == ERROR_BODY, (method, path, status)
        if path not in UNAUTHENTICATED:
            assert "401" in errors, f"{method} {path} does not declare 401"
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in errors, f"{method} {path} does not declare 422"


def test_the_error_body_is_code_and_message() -> None:
    schemas = create_app().openapi()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 shape is never answered
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert sorted(schemas["ErrorDetail"]["required"]) == ["code", "message"]


def test_the_document_is_served_without_a_token() -> None:
    client = TestClient(create_app())
    assert "/tenants/{ref}/suspend" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
