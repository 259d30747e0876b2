"""The processes that make up the system, as ``tributary run`` starts them (one of each).

Every process is a ``tributary`` subcommand (``api``, ``worker``, ``processor``, ``trainer``); compose,
Kubernetes and the Dockerfile run the same subcommands (tests/unit/test_manifests.py checks it).
"""

from __future__ import annotations

import sys

from cli.supervisor import ServiceSpec
from consumers.processors.kinds import PROCESSORS
from settings import Settings
from topology.groups import Group
from topology.topics import Priority

API_ARGS: tuple[str, ...] = ("api",)
# The subcommand that runs one member of each consumer group that has a process of its own
# (`tributary workers --group G` runs N of them).
GROUP_ARGS: dict[str, tuple[str, ...]] = {
    **{kind.group.group_id: ("processor", name) for name, kind in PROCESSORS.items()},
    **{Group.inference(p).value: ("worker", "--priority", p.value) for p in Priority},
    Group.TRAINERS.value: ("trainer",),
}

# The subcommand whose process is a member of each declared group: the ingress reads its own replies.
MEMBER_ARGS: dict[str, tuple[str, ...]] = {Group.INGRESS_REPLIES.value: API_ARGS, **GROUP_ARGS}


def tributary(*args: str) -> list[str]:
    """The argv of ``tributary ARGS`` on this interpreter: the installed script's CLI, found without PATH."""
    return [sys.executable, "-m", "cli", *args]


GROUP_COMMANDS: dict[str, list[str]] = {group_id: tributary(*args) for group_id, args in GROUP_ARGS.items()}


def group_replicas(group_id: str, replicas: int, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    """N members of one consumer group, for `tributary workers` (they share the group's partitions)."""
    if group_id not in GROUP_COMMANDS:
        raise KeyError(f"no runnable process for group {group_id!r}; known: {sorted(GROUP_COMMANDS)}")
    return [ServiceSpec(f"{group_id}-{i + 1}", GROUP_COMMANDS[group_id], extra_env or {}) for i in range(replicas)]


def system_services(settings: Settings, extra_env: dict[str, str] | None = None) -> list[ServiceSpec]:
    env = extra_env or {}
    return [
        ServiceSpec("api", tributary(*API_ARGS), env),
        *(ServiceSpec(kind.group.group_id, GROUP_COMMANDS[kind.group.group_id], env) for kind in PROCESSORS.values()),
        # One inference worker per priority: each priority is its own group, scaled on its own.
        *(ServiceSpec(f"inference-worker-{p.value}", GROUP_COMMANDS[Group.inference(p).value], env)
          for p in Priority),
        ServiceSpec("trainer", GROUP_COMMANDS[Group.TRAINERS.value], env),
    ]
