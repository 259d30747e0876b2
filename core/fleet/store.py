"""``FleetStore``: the one interface to fleet state. Cassandra in production, memory in unit tests;
one shared test suite (tests/store_contract.py) runs against every implementation.

Writes that must be answered at once (registration 409, one active round, one update per
device per round, version numbers) are compare-and-set operations here, so the ingress can
answer them without races across replicas.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from core.fleet.models import (
    ApiKeyRecord,
    CatalogModel,
    Device,
    DevicePage,
    DeviceQuery,
    Freshness,
    Heartbeat,
    LearningGraph,
    ModelUpdate,
    ModelVersion,
    RetrainingDecision,
    Round,
    RoundStatus,
    Seat,
)


class FleetStore(ABC):
    # --- devices and keys ---------------------------------------------------------------
    @abstractmethod
    def create_device(self, device: Device, key: ApiKeyRecord) -> bool:
        """Insert device and its key; False (nothing written) when device_id exists."""

    @abstractmethod
    def get_device(self, device_id: str) -> Device | None: ...

    @abstractmethod
    def delete_device(self, device_id: str) -> None:
        """Undo a registration whose event could not be published."""

    def record_heartbeat(
        self, device_id: str, at: datetime, status: str | None, metrics: dict[str, Any]
    ) -> Device | None:
        """Apply a heartbeat (time, reported status when given, metrics) unless an equal or newer one was
        applied (idempotent); None if unknown."""
        return self.record_heartbeats([Heartbeat(device_id, at, status, metrics)])[0]

    @abstractmethod
    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[Device | None]:
        """Apply many heartbeats at once, last-write-wins by each heartbeat's own time: a device ends with
        its newest heartbeat (time, metrics, reported status when given) whatever order they arrive in,
        in one call or over several, and an equal or older one changes nothing (redelivery is harmless).
        Returns, for each beat in order, the device as it stands after the call (None: unknown device,
        nothing written for it)."""

    @abstractmethod
    def set_freshness(self, device_id: str, expected: Freshness, new: Freshness) -> bool:
        """Compare-and-set the freshness; False when another writer changed it first."""

    @abstractmethod
    def list_devices(self) -> list[Device]:
        """Every device (the freshness sweep); callers that filter use ``find_devices``."""

    @abstractmethod
    def find_devices(self, query: DeviceQuery) -> DevicePage:
        """One page of the devices ``query`` matches, read through indexes, not a table scan."""

    @abstractmethod
    def count_devices(self, heartbeat_since: datetime | None = None) -> int:
        """All devices, or those with a heartbeat at or after ``heartbeat_since``."""

    @abstractmethod
    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    def put_api_key(self, key: ApiKeyRecord) -> None: ...

    @abstractmethod
    def revoke_api_key(self, key_hash: str, at: datetime) -> bool:
        """Mark the key revoked (compare-and-set); False when it is unknown or already revoked."""

    @abstractmethod
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id (what operators name keys by; the key itself is never stored)."""

    @abstractmethod
    def list_api_keys(self, subject_id: str | None = None) -> list[ApiKeyRecord]:
        """Every key, or the keys of one subject (a device's keys), oldest first."""

    # --- rounds -----------------------------------------------------------------------
    @abstractmethod
    def create_active_round(self, round_: Round) -> Round | None:
        """Claim the single active-round slot and store the round with the next round_number.

        Returns None on success (round_.round_number is set), or the round holding the slot.
        """

    @abstractmethod
    def get_round(self, round_id: str) -> Round | None: ...

    @abstractmethod
    def latest_round(self) -> Round | None: ...

    @abstractmethod
    def active_round_id(self) -> str | None: ...

    @abstractmethod
    def transition_round(self, round_id: str, expected: RoundStatus, new: RoundStatus, **fields: Any) -> bool:
        """CAS on status; frees the active slot when the new status is terminal."""

    @abstractmethod
    def select_device(self, round_id: str, device_id: str) -> Seat:
        """Add the device to an active round's selection while fewer than ``target_devices`` are
        selected (compare-and-set: replicas racing for the last seat never exceed the target).
        TAKEN only for the call that added it, so its ``device_selected`` event is emitted once."""

    @abstractmethod
    def claim_aggregation(self, round_id: str, attempts_seen: int, lease_until: datetime) -> bool:
        """Start aggregation attempt ``attempts_seen + 1`` of an aggregating round, holding it until
        ``lease_until``: CAS on the attempt count, so one processor works on a round at a time."""

    @abstractmethod
    def extend_aggregation(self, round_id: str, attempt: int, lease_until: datetime,
                           error: str | None = None) -> bool:
        """Move the lease of attempt ``attempt`` (renew it, or set when the next attempt may start after
        a failure, recording ``error``); False when the round left aggregating or another attempt began."""

    @abstractmethod
    def update_round_counters(self, round_id: str, *, participated: int, completed: int, failed: int) -> None: ...

    @abstractmethod
    def add_update(self, update: ModelUpdate) -> bool:
        """One update per device per round: False when this device already submitted."""

    @abstractmethod
    def list_updates(self, round_id: str) -> list[ModelUpdate]: ...

    @abstractmethod
    def withdraw_update(self, round_id: str, device_id: str) -> str | None:
        """Remove the device's update from a round that has not aggregated yet (the device was
        deleted); the withdrawn update's id, or None when it had none."""

    # --- catalog ----------------------------------------------------------------------
    @abstractmethod
    def create_model(self, model: CatalogModel) -> bool:
        """False when the id exists."""

    @abstractmethod
    def get_model(self, model_id: str) -> CatalogModel | None: ...

    @abstractmethod
    def update_model(self, model: CatalogModel) -> None: ...

    @abstractmethod
    def delete_model(self, model_id: str) -> bool: ...

    @abstractmethod
    def list_models(
        self, *, limit: int, offset: int, framework: str | None = None, is_baseline: bool | None = None,
        task_type: str | None = None,
    ) -> tuple[list[CatalogModel], int]:
        """Newest first, filtered; returns (page, total matching)."""

    @abstractmethod
    def next_version(self, model_id: str) -> int:
        """Reserve the next version number (CAS), starting at 1."""

    @abstractmethod
    def add_version(self, version: ModelVersion) -> None: ...

    @abstractmethod
    def get_version(self, model_id: str, version: int) -> ModelVersion | None: ...

    @abstractmethod
    def list_versions(self, model_id: str) -> list[ModelVersion]: ...

    # --- learning graphs (seed 002) ---------------------------------------------------
    @abstractmethod
    def add_learning_graph(self, graph: LearningGraph) -> int:
        """Store the graph; returns the number of graphs pending retraining."""

    @abstractmethod
    def take_pending_graphs(self) -> int:
        """Mark pending graphs as consumed by a retraining request; returns how many."""

    @abstractmethod
    def get_retraining_decision(self, trigger_id: str) -> RetrainingDecision | None: ...

    @abstractmethod
    def record_retraining_decision(self, decision: RetrainingDecision) -> RetrainingDecision:
        """Keep the first decision for a trigger (compare-and-set); returns the one that holds."""

    # --- rate limiting (shared by every ingress replica) --------------------------------
    @abstractmethod
    def hit(self, subject: str, window_start: int, count: int = 1) -> int:
        """Count ``count`` requests of ``subject`` in the (one-minute) window; returns the count so far.
        What it stores expires by itself a few windows later."""



def encode_cursor(device_id: str) -> str:
    """A page cursor: the last device id of the page, opaque to clients."""
    return base64.urlsafe_b64encode(device_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The device id a cursor names; ValueError when it is not one ``encode_cursor`` made."""
    try:
        return base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (UnicodeError, binascii.Error) as exc:
        raise ValueError("not a device cursor") from exc
