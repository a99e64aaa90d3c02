"""The OpenAPI schema at /api/schema/: valid, warning-free, and saying what each operation answers."""

from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

# Every operation, by its id: a rename shows here.
OPERATIONS = {
    "auth_token_obtain": ("post", "/api/auth/token/"),
    "auth_token_refresh": ("post", "/api/auth/token/refresh/"),
    "auth_token_blacklist": ("post", "/api/auth/token/blacklist/"),
    "events_list": ("get", "/api/events/"),
    "agents_list": ("get", "/api/agents/"),
    "runs_list": ("get", "/api/runs/"),
    "runs_create": ("post", "/api/runs/"),
    "runs_retrieve": ("get", "/api/runs/{run_id}/"),
    "runs_cancel": ("post", "/api/runs/{run_id}/cancel/"),
}
FIELD_ERRORS = "field errors"
BODY = "field errors, or a code"
AUTH = "auth error"
# What each operation can answer: a status, and the codes of its {"code", "detail"} body.
ANSWERS: dict[str, dict[str, Any]] = {
    "auth_token_obtain": {"200": None, "400": BODY, "401": AUTH, "429": ["rate_limited"], "503": ["unavailable"]},
    "auth_token_refresh": {"200": None, "400": BODY, "401": AUTH, "429": ["rate_limited"], "503": ["unavailable"]},
    "auth_token_blacklist": {"200": None, "400": BODY, "401": AUTH, "503": ["unavailable"]},
    "events_list": {"200": None, "400": FIELD_ERRORS, "401": AUTH, "503": ["unavailable"]},
    "agents_list": {"200": None, "401": AUTH, "503": ["unavailable"]},
    "runs_list": {"200": None, "400": FIELD_ERRORS, "401": AUTH, "503": ["unavailable"]},
    "runs_create": {
        "201": None,
        "400": ["invalid_message", "unknown_agent", "invalid_json", "bad_request"],
        "401": AUTH,
        "429": ["rate_limited", "too_many_runs"],
        "503": ["unavailable"],
    },
    "runs_retrieve": {"200": None, "401": AUTH, "404": ["not_found"], "503": ["unavailable"]},
    "runs_cancel": {
        "202": None,
        "401": AUTH,
        "404": ["not_found"],
        "409": ["run_finished"],
        "429": ["rate_limited"],
        "503": ["unavailable"],
    },
}


def operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for path in schema["paths"].values() for op in path.values()}


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def body_schema(schema: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert list(response["content"]) == ["application/json"], response
    return resolve(schema, response["content"]["application/json"]["schema"])


def codes(schema: dict[str, Any], body: dict[str, Any]) -> list[str]:
    assert body["required"] == ["code", "detail"], body
    return list(resolve(schema, body["properties"]["code"])["enum"])


def test_the_schema_validates_as_openapi_3_with_no_warnings(tmp_path: Any) -> None:
    # Fails on any drf-spectacular warning or error, and on an invalid OpenAPI document.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.0.3")


def test_the_schema_and_docs_are_public(openapi_schema: dict[str, Any]) -> None:
    assert openapi_schema["info"]["title"] == "Agent events API"
    yaml = Client().get("/api/schema/")
    assert yaml.status_code == 200 and yaml.content.startswith(b"openapi: 3.0.3")
    docs = Client().get("/api/docs/")
    assert docs.status_code == 200
    assert "script-src 'self'" in docs["Content-Security-Policy"]
    assert b"<style" not in docs.content and b"<script>" not in docs.content  # nothing inline
    script = Client().get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"] == "application/javascript"
    assert b'"/api/schema/"' in script.content


def test_the_operation_ids_are_exactly_these(openapi_schema: dict[str, Any]) -> None:
    found = {
        op["operationId"]: (method, path) for path, ops in openapi_schema["paths"].items() for method, op in ops.items()
    }
    assert found == OPERATIONS


@pytest.mark.parametrize("operation_id", sorted(ANSWERS))
def test_each_operation_lists_the_answers_it_gives_with_their_codes(
    openapi_schema: dict[str, Any], operation_id: str
) -> None:
    responses = operations(openapi_schema)[operation_id]["responses"]
    assert sorted(responses) == sorted(ANSWERS[operation_id])
    for status, expected in ANSWERS[operation_id].items():
        body = body_schema(openapi_schema, responses[status])
        if expected is None:
            continue
        if expected == AUTH:
            assert body["required"] == ["detail"] and resolve(openapi_schema, body["properties"]["code"])["enum"] == [
                "token_not_valid"
            ]
        elif expected == FIELD_ERRORS:
            assert body["additionalProperties"] == {"type": "array", "items": {"type": "string"}}
        elif expected == BODY:
            field_errors, refused = (resolve(openapi_schema, option) for option in body["oneOf"])
            assert "additionalProperties" in field_errors
            assert codes(openapi_schema, refused) == ["invalid_json", "bad_request"]
        else:
            assert codes(openapi_schema, body) == expected, (operation_id, status)
    if "429" in responses:
        assert "Retry-After" in responses["429"]["headers"]


def test_every_operation_but_signing_in_needs_a_jwt_bearer_token(openapi_schema: dict[str, Any]) -> None:
    assert openapi_schema["components"]["securitySchemes"] == {
        "jwtAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    assert "security" not in openapi_schema  # no default: each operation says
    for operation_id, op in operations(openapi_schema).items():
        expected: list[dict[str, list[str]]] | None = None if operation_id.startswith("auth_") else [{"jwtAuth": []}]
        assert op.get("security") == expected, operation_id


def test_paging_is_by_seq_for_events_and_by_time_for_runs(openapi_schema: dict[str, Any]) -> None:
    ops = operations(openapi_schema)
    events = {p["name"]: p["schema"] for p in ops["events_list"]["parameters"]}
    assert events["after"] == {"type": "integer", "minimum": 0, "default": 0}
    assert events["limit"] == {"type": "integer", "minimum": 1, "maximum": 500}
    assert set(events) == {"after", "limit", "run", "event"}
    runs = {p["name"]: p["schema"] for p in ops["runs_list"]["parameters"]}
    assert runs == {
        "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        "before": {"type": "string", "format": "date-time"},
    }
    page = resolve(openapi_schema, ops["events_list"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert page["properties"]["next"]["nullable"] is True
    assert (
        "next"
        not in resolve(openapi_schema, ops["runs_list"]["responses"]["200"]["content"]["application/json"]["schema"])[
            "properties"
        ]
    )


def test_a_started_run_links_to_reading_and_cancelling_it(openapi_schema: dict[str, Any]) -> None:
    links = operations(openapi_schema)["runs_create"]["responses"]["201"]["links"]
    assert {name: link["operationId"] for name, link in links.items()} == {
        "GetRun": "runs_retrieve",
        "CancelRun": "runs_cancel",
    }
    assert all(link["parameters"] == {"run_id": "$response.body#/id"} for link in links.values())


def test_the_agui_streams_are_left_out_and_the_schema_says_where_they_are(openapi_schema: dict[str, Any]) -> None:
    # SSE from a consumer outside Django's URLs: AG-UI's own schemas describe its events.
    assert not [path for path in openapi_schema["paths"] if path.startswith("/api/ag-ui/")]
    assert "`/api/ag-ui/`" in openapi_schema["info"]["description"]
