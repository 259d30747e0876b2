"""What a model does: seed 001's ``TaskType``, defined once for the API, the core and the workers.

User models from the catalog that declare no task type are served with the generic tensor
contract (``consumers/inference/runtime.py``) under ``GENERIC_TASK_TYPE``, which is not a seed
task type: the API never accepts it, the ingress and the workers serve it.
"""

from __future__ import annotations

from enum import StrEnum


class TaskType(StrEnum):
    """The task types of seed 001 (``TaskType`` schema); gRPC's ``TASK_TYPE_<NAME>`` follow the names."""

    TXT2EMBED = "txt2embed"
    IMG2EMBED = "img2embed"
    TXT2IMG = "txt2img"
    IMG2TXT = "img2txt"
    TXT2TXT = "txt2txt"

    @classmethod
    def has(cls, value: object) -> bool:
        """Whether ``value`` is one of ours (``str in TaskType`` raises on Python 3.11)."""
        return value in cls._value2member_map_


GENERIC_TASK_TYPE = "tensor"
SERVED_TASK_TYPES: frozenset[str] = frozenset({*TaskType, GENERIC_TASK_TYPE})
