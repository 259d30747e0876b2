"""The processes that make up the system, as ``tributary run`` starts them (one of each)."""

from __future__ import annotations

from core.settings import Settings
from core.supervisor import ServiceSpec, python_module


def system_services(settings: Settings, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    env = extra_env or {}
    services = [ServiceSpec("api", python_module("api"), env)]
    return services
