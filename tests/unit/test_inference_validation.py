"""Inference input validation: one JSON Schema per task type, every field error named (400 INVALID_INPUT)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import DomainError, ErrorKind
from core.serving.validation import INPUT_SCHEMAS, PARAMETER_SCHEMAS, field_errors, validate_request
from core.task_types import TaskType

pytestmark = pytest.mark.unit

PNG = "data:image/png;base64,iVBORw0KGgo="

GOOD: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("txt2embed", {"text": "a sentence"}, {"normalize": True}),
    ("txt2embed", {"text": ["one", "two"]}, {}),
    ("txt2embed", {"texts": ["one"]}, {}),
    ("img2embed", {"image": PNG}, {"normalize": False}),
    ("img2embed", {"images": [PNG, PNG]}, {}),
    ("img2txt", {"image": PNG}, {"min_score": 0.3}),
    ("txt2txt", {"text": "Hello"}, {"direction": "en-pt"}),
    ("txt2txt", {"prompt": "Once upon a time"}, {"max_tokens": 100, "temperature": 0.7}),
    ("txt2txt", {"prompts": ["a", "b"]}, {}),
    ("txt2txt", {"messages": [{"role": "user", "content": "Hi"}]}, {}),
    ("txt2img", {"text": "A beautiful sunset over mountains"}, {"width": 512, "height": 512, "steps": 50}),
    # seed 001's InputData allows extra fields
    ("txt2embed", {"text": "x", "source": "crawler"}, {"custom": 1}),
]

BAD: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("txt2embed", {}, {}, "input_data"),
    ("txt2embed", {"text": 42}, {}, "input_data.text"),
    ("txt2embed", {"text": []}, {}, "input_data.text"),
    ("txt2embed", {"texts": ["ok", 3]}, {}, "input_data.texts.1"),
    ("txt2embed", {"text": "x"}, {"normalize": "yes"}, "parameters.normalize"),
    ("img2embed", {"text": "not an image"}, {}, "input_data"),
    ("img2embed", {"image": ""}, {}, "input_data.image"),
    ("img2embed", {"images": []}, {}, "input_data.images"),
    ("img2txt", {"images": [PNG]}, {}, "input_data"),
    ("img2txt", {"image": PNG}, {"min_score": 2}, "parameters.min_score"),
    ("txt2txt", {"input": "x"}, {}, "input_data"),
    ("txt2txt", {"messages": [{"role": "robot", "content": "x"}]}, {}, "input_data.messages.0.role"),
    ("txt2txt", {"prompt": ""}, {}, "input_data.prompt"),
    ("txt2txt", {"text": "x"}, {"direction": "en-fr"}, "parameters.direction"),
    ("txt2txt", {"text": "x"}, {"max_tokens": 0}, "parameters.max_tokens"),
    ("txt2img", {"image": PNG}, {}, "input_data"),
    ("txt2img", {"text": "x"}, {"width": 10_000}, "parameters.width"),
]


def test_every_task_type_has_input_and_parameter_schemas() -> None:
    assert set(INPUT_SCHEMAS) == set(PARAMETER_SCHEMAS) == set(TaskType)
    assert set(TaskType) == {"txt2embed", "img2embed", "img2txt", "txt2txt", "txt2img"}


@pytest.mark.parametrize(("task_type", "input_data", "parameters"), GOOD)
def test_good_inputs_pass(task_type: str, input_data: dict[str, Any], parameters: dict[str, Any]) -> None:
    assert field_errors(task_type, input_data, parameters) == []
    validate_request(task_type, input_data, parameters)


@pytest.mark.parametrize(("task_type", "input_data", "parameters", "field"), BAD)
def test_bad_inputs_name_the_field(task_type: str, input_data: dict[str, Any], parameters: dict[str, Any],
                                   field: str) -> None:
    errors = field_errors(task_type, input_data, parameters)
    assert field in [e["field"] for e in errors], errors
    assert all(e["message"] for e in errors)


def test_invalid_input_is_a_400_with_every_field_error() -> None:
    with pytest.raises(DomainError) as caught:
        validate_request("txt2embed", {"text": 1}, {"normalize": "no"})
    error = caught.value
    assert error.kind is ErrorKind.INVALID and error.code == "INVALID_INPUT"
    assert error.details is not None and error.details["task_type"] == "txt2embed"
    assert {e["field"] for e in error.details["errors"]} == {"input_data.text", "parameters.normalize"}
    assert "input_data.text" in error.message


def test_missing_fields_get_a_readable_message() -> None:
    (error,) = field_errors("txt2embed", {}, {})
    assert error == {"field": "input_data", "message": "needs one of: 'text', 'texts'"}


def test_input_data_must_be_an_object() -> None:
    errors = field_errors("txt2embed", ["text"], {})
    assert errors and errors[0]["field"] == "input_data"


def test_unknown_task_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown task type"):
        field_errors("txt2video", {}, {})
