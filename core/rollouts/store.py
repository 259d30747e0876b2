"""``RolloutStore``: the one interface to rollout state. Cassandra in production, memory in unit
tests; one shared suite (tests/rollout_store_contract.py) runs against both.

The only write the ingress makes is ``create`` (its 409 must be answered at once: one active
rollout per model is a compare-and-set on a slot); every later change is the rollouts processor's,
a compare-and-set on the rollout's ``revision`` so replicas and redeliveries never apply one twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from core.rollouts.models import Rollout, TelemetryRow


class RolloutStore(ABC):
    @abstractmethod
    def create(self, rollout: Rollout) -> str | None:
        """Claim the model's active-rollout slot and store the rollout as the model's latest. None on
        success; else the id of the rollout that holds the slot (nothing written)."""

    @abstractmethod
    def get(self, rollout_id: str) -> Rollout | None: ...

    @abstractmethod
    def list_rollouts(self, model_id: str | None = None) -> list[Rollout]:
        """Every rollout (of one model), newest first."""

    @abstractmethod
    def current(self) -> list[Rollout]:
        """The latest rollout of each model that has one: what assignments follow."""

    @abstractmethod
    def latest(self, model_id: str) -> Rollout | None:
        """The model's latest rollout (one read), or None when it never had one."""

    @abstractmethod
    def update(self, rollout: Rollout, expected_revision: int) -> bool:
        """Write the rollout's status, stage, stage start, reason and ``updated_at`` with ``revision =
        expected_revision + 1`` if the stored revision is still ``expected_revision`` (False: another
        writer changed it first; nothing written). A terminal status frees the model's slot."""

    @abstractmethod
    def add_telemetry(self, rows: Sequence[TelemetryRow]) -> None:
        """Upsert reports, one per (rollout, stage, version, device, window_start): a redelivered
        report overwrites itself, so counts never double."""

    @abstractmethod
    def telemetry(self, rollout_id: str, stage: int) -> list[TelemetryRow]: ...

    @abstractmethod
    def record_gate(self, rollout_id: str, stage: int, gate: dict[str, Any]) -> None:
        """Keep the last gate judgement of a stage (its verdict, reason and the telemetry it saw)."""

    @abstractmethod
    def gates(self, rollout_id: str) -> dict[int, dict[str, Any]]: ...
