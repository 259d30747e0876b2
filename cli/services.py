"""The processes that make up the system, as ``tributary run`` starts them (one of each)."""

from __future__ import annotations

from cli.supervisor import ServiceSpec, python_module
from settings import Settings
from topology.topics import Priority

# How to start one member of each consumer group we run as our own process.
GROUP_COMMANDS: dict[str, list[str]] = {
    "device-processor": python_module("consumers.processors.fleet", "devices"),
    "round-processor": python_module("consumers.processors.fleet", "rounds"),
    **{f"inference-workers-{p.value}": python_module("consumers.inference.worker", "--priority", p.value)
       for p in Priority},
}


def group_replicas(group_id: str, replicas: int, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    """N members of one consumer group, for `tributary workers` (they share the group's partitions)."""
    if group_id not in GROUP_COMMANDS:
        raise KeyError(f"no runnable process for group {group_id!r}; known: {sorted(GROUP_COMMANDS)}")
    return [ServiceSpec(f"{group_id}-{i + 1}", GROUP_COMMANDS[group_id], extra_env or {}) for i in range(replicas)]


def system_services(settings: Settings, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    env = extra_env or {}
    return [
        ServiceSpec("api", python_module("api"), env),
        ServiceSpec("device-processor", GROUP_COMMANDS["device-processor"], env),
        ServiceSpec("round-processor", GROUP_COMMANDS["round-processor"], env),
        # One inference worker per priority: each priority is its own group, scaled on its own.
        *(ServiceSpec(f"inference-worker-{p.value}", GROUP_COMMANDS[f"inference-workers-{p.value}"], env)
          for p in Priority),
    ]
