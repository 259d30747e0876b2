"""The processes that make up the system, as ``tributary run`` starts them (one of each)."""

from __future__ import annotations

from core.settings import Settings
from core.supervisor import ServiceSpec, python_module


def system_services(settings: Settings, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    env = extra_env or {}
    return [
        ServiceSpec("api", python_module("api"), env),
        ServiceSpec("device-processor", python_module("consumers.processors.fleet", "devices"), env),
        ServiceSpec("round-processor", python_module("consumers.processors.fleet", "rounds"), env),
    ]
