"""Who is calling and what they may do: API keys to principals (with a lookup cache that key events
keep honest), roles to actions, and the shared per-key rate limit.

Transports (REST, gRPC) parse the credential, name the call's ``Action`` and call these; the rules
live here.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from cachetools import TTLCache

from core.api_keys import hash_api_key, is_well_formed, key_id
from core.errors import DomainError, ErrorKind
from core.fleet.models import ApiKeyRecord, SubjectType
from core.fleet.store import FleetStore
from settings import Settings


class Action(StrEnum):
    """What a call does, as far as access goes. Every REST route and gRPC method names one
    (``api/access.py``); ``ROLE_ACTIONS`` says which roles may do it."""

    STATUS = "status"  # system status, pipeline validation
    INFERENCE = "inference"  # sync and async inference, and the caller's own jobs
    CATALOG_READ = "catalog.read"  # models, versions, downloads, lock files
    REGISTRY_WRITE = "registry.write"  # register, change, delete, upload, fetch, load, unload models
    OWN_DEVICE = "device.self"  # a device's own row, heartbeat and key (operators: any device)
    TRAINING = "training"  # round reads, update and learning-graph submission
    FLEET_ADMIN = "fleet.admin"  # list and delete devices, start and cancel rounds, run rollouts
    KEYS = "keys"  # create, list, rotate and revoke keys
    DATASETS_READ = "datasets.read"  # list and fetch dataset records (seed 003 §4)
    DATASETS_WRITE = "datasets.write"  # upload and delete datasets
    TRAINING_JOBS = "training.jobs"  # create, list, read and cancel LoRA training jobs (seed 003 §2)
    CARBON_READ = "carbon.read"  # carbon summary, per-job and per-model emissions (seed 003 §5)


ROLE_ACTIONS: dict[SubjectType, frozenset[Action]] = {
    # seed 000: a device acts for itself and takes part in training; it may also call inference
    # (cloud fallback), counted against its own 100/min.
    SubjectType.DEVICE: frozenset({Action.STATUS, Action.INFERENCE, Action.CATALOG_READ, Action.OWN_DEVICE,
                                   Action.TRAINING}),
    # an application: serving and reads, nothing that changes the fleet, the registry or keys
    # and its own datasets for fine-tuning (an application prepares them; devices never see them)
    SubjectType.SERVICE: frozenset({Action.STATUS, Action.INFERENCE, Action.CATALOG_READ, Action.DATASETS_READ,
                                    Action.DATASETS_WRITE, Action.CARBON_READ}),
    SubjectType.OPERATOR: frozenset(Action),
}


def forbidden(message: str, **details: Any) -> DomainError:
    return DomainError(ErrorKind.FORBIDDEN, "FORBIDDEN", message, details=details or None)


@dataclass(frozen=True)
class Principal:
    key_id: str  # safe to log and audit; never the key
    subject_type: SubjectType  # the key's role
    subject_id: str  # device_id for device keys; the name of the service or operator otherwise
    rate_limit_per_minute: int | None = None  # this key's own limit; None: its role's

    @property
    def is_operator(self) -> bool:
        return self.subject_type is SubjectType.OPERATOR

    def may(self, action: Action) -> bool:
        return action in ROLE_ACTIONS[self.subject_type]

    def require(self, action: Action) -> None:
        if not self.may(action):
            raise forbidden(f"A {self.subject_type.value} key may not do this ({action.value}).",
                            role=self.subject_type.value, action=action.value)

    def require_operator(self) -> None:
        if not self.is_operator:
            raise forbidden("This operation needs an operator API key.", role=self.subject_type.value)

    def require_device(self, device_id: str) -> None:
        """A device key acts only as its own device; operators may act on any device; service keys on none."""
        if self.is_operator or (self.subject_type is SubjectType.DEVICE and self.subject_id == device_id):
            return
        raise forbidden("This API key cannot act for this device.", role=self.subject_type.value)


def principal_of(record: ApiKeyRecord) -> Principal:
    if record.revoked_at is not None:
        raise _unauthenticated("This API key has been revoked.")
    return Principal(record.key_id, record.subject_type, record.subject_id, record.rate_limit_per_minute)


def _unauthenticated(message: str = "Invalid or missing API key.") -> DomainError:
    return DomainError(
        ErrorKind.UNAUTHENTICATED, "UNAUTHORIZED", message, hint="Send 'Authorization: Bearer sk_live_...'."
    )


@dataclass(frozen=True)
class KeyEvent:
    """A key stopped being valid (revoked, rotated away, its device deleted): every ingress replica
    evicts it from its lookup cache. Travels on the compacted key-events topic, keyed by key id."""

    key_id: str
    event: str  # "revoked"
    subject_type: SubjectType
    subject_id: str
    at: datetime

    def record(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "event": self.event, "subject_type": self.subject_type.value,
                "subject_id": self.subject_id, "at": self.at}

    @classmethod
    def of(cls, record: dict[str, Any]) -> KeyEvent:
        return cls(str(record["key_id"]), str(record["event"]), SubjectType(record["subject_type"]),
                   str(record["subject_id"]), record["at"])


@dataclass(frozen=True)
class Propagation:
    """Whether every live ingress replica applied a key event before the bound
    (``key_propagation_timeout_s``); ``pending``: the replicas that had not."""

    confirmed: bool
    replicas: int  # live replicas that applied it
    pending: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        return {"confirmed": self.confirmed, "replicas": self.replicas, "pending": list(self.pending)}


class KeyEventBus(Protocol):
    """Delivers key events to every ingress replica and says whether all live ones applied them
    (``messaging.key_events.KafkaKeyEventBus`` in production; ``LocalKeyEventBus`` in one process)."""

    async def broadcast(self, events: list[KeyEvent]) -> Propagation: ...


class Authenticator:
    """API keys to principals. The operator key of the environment is compared in memory; stored keys
    are looked up once and then answered from a cache bounded in size and age
    (``key_cache_max_age_s``). A revoked key leaves every replica's cache at once through a key event
    (``apply``), so the cache never outlives a revocation that has been confirmed."""

    def __init__(self, store: FleetStore, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        admin = settings.admin_api_key.get_secret_value()
        self._admin_hash = hash_api_key(admin) if admin else None
        self.admin_key_id = key_id(admin) if admin else None
        self._lock = threading.Lock()
        self._cache: TTLCache[str, ApiKeyRecord] = TTLCache(
            maxsize=settings.key_cache_size, ttl=settings.key_cache_max_age_s, timer=clock)
        self._events_applied = 0  # a lookup that overlapped an event is not cached (it may predate it)

    def try_authenticate(self, key: str | None) -> Principal | None:
        """Answer without I/O (safe on the event loop) for a missing or malformed key, the operator
        key and a cached lookup; None when the key must be looked up in the store (``lookup``)."""
        if not key:
            raise _unauthenticated()
        if not is_well_formed(key):
            raise _unauthenticated("Malformed API key: expected sk_live_ followed by 32 letters or digits.")
        hashed = hash_api_key(key)
        if self._admin_hash is not None and hmac.compare_digest(hashed, self._admin_hash):
            return Principal(key_id(key), SubjectType.OPERATOR, "operator")
        with self._lock:
            record = self._cache.get(hashed)
        return principal_of(record) if record is not None else None

    def authenticate(self, key: str | None) -> Principal:
        principal = self.try_authenticate(key)
        if principal is not None:
            return principal
        assert key is not None  # try_authenticate refused a missing key
        return self.lookup(key)

    def lookup(self, key: str) -> Principal:
        """The store's answer for a well-formed key that is not the operator's (blocking I/O), cached."""
        hashed = hash_api_key(key)
        with self._lock:
            seen = self._events_applied
        record = self.store.get_api_key(hashed)
        if record is None:
            raise _unauthenticated()
        with self._lock:
            if self._events_applied == seen:
                self._cache[hashed] = record
        return principal_of(record)

    def apply(self, event: KeyEvent) -> None:
        """A key event: forget the key, so its next use reads the store (which says it is revoked)."""
        with self._lock:
            self._events_applied += 1
            for hashed in [h for h, r in self._cache.items() if r.key_id == event.key_id]:
                del self._cache[hashed]

    def cached(self) -> int:
        with self._lock:
            return len(self._cache)


class LocalKeyEventBus:
    """The key-event bus of a single process (unit tests, in-memory wiring): the one authenticator
    there is applies the events at once."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def broadcast(self, events: list[KeyEvent]) -> Propagation:
        for event in events:
            self.authenticator.apply(event)
        return Propagation(True, 1)


class RateLimiter:
    """Fixed one-minute windows counted in the shared store, so every replica sees every hit.

    A replica leases tokens from the shared counter in blocks instead of one round trip per
    request: it adds a block to the window's count and spends the part that fell under the limit
    locally. Blocks shrink as the count nears the limit (an eighth of what is left, down to one),
    so the limit is exact across replicas: the shared count only ever grants up to ``limit``
    tokens, and near the limit every request asks the store. A replica's unspent tokens are
    capacity no other replica can use until the window ends (conservative, never over the limit).
    """

    WINDOW_S = 60
    MAX_BLOCK = 1000
    BLOCK_SHARE = 8  # lease at most 1/8 of the tokens left in the window at once

    def __init__(self, store: FleetStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.limit = settings.rate_limit_per_minute  # devices and open endpoints: seed 000's figure
        self.role_limits = {SubjectType.DEVICE: settings.rate_limit_per_minute,
                            SubjectType.SERVICE: settings.service_rate_limit_per_minute,
                            SubjectType.OPERATOR: settings.operator_rate_limit_per_minute}
        self.clock = clock
        self._lock = threading.Lock()
        # (subject, window_start) -> [tokens left here, shared count last seen]
        self._leases: dict[tuple[str, int], list[int]] = {}
        self._leasing: dict[tuple[str, int], threading.Lock] = {}  # (subject, window_start) -> its lease's lock

    def try_spend(self, subject: str) -> bool:
        """Spend a token this replica already leased, without I/O (safe on the event loop);
        False when ``check`` must ask the shared store."""
        window_start = int(self.clock() // self.WINDOW_S) * self.WINDOW_S
        with self._lock:
            lease = self._leases.get((subject, window_start))
            if lease is not None and lease[0] > 0:
                lease[0] -= 1
                return True
        return False

    def limit_for(self, principal: Principal) -> int:
        """The key's own limit when it has one, else its role's: a device keeps seed 000's budget,
        service and operator keys get their own, high ones."""
        return principal.rate_limit_per_minute or self.role_limits[principal.subject_type]

    def check(self, subject: str, limit: int | None = None) -> None:
        """Count one request of ``subject`` against ``limit`` per minute (default: the device limit)."""
        limit = limit or self.limit
        if self.try_spend(subject):
            return
        now = self.clock()
        window_start = int(now // self.WINDOW_S) * self.WINDOW_S
        key = (subject, window_start)
        with self._lock:
            leasing = self._leasing.setdefault(key, threading.Lock())
        # One lease per key at a time: requests that arrive together (a gRPC stream's messages, a
        # burst) would each lease a block and, between them, claim the whole limit; they wait for
        # the one lease in flight and spend from it.
        with leasing:
            self._lease(subject, limit, now, window_start, key)

    def _lease(self, subject: str, limit: int, now: float, window_start: int, key: tuple[str, int]) -> None:
        if self.try_spend(subject):
            return
        with self._lock:
            lease = self._leases.get(key)
            seen = lease[1] if lease is not None else 0
        block = max(1, min(self.MAX_BLOCK, (limit - seen) // self.BLOCK_SHARE))
        total = self.store.hit(subject, window_start, block)
        granted = max(0, min(block, limit - (total - block)))
        with self._lock:
            if len(self._leases) > 10_000:  # old windows: drop everything not of this window
                self._leases = {k: v for k, v in self._leases.items() if k[1] == window_start}
                self._leasing = {k: v for k, v in self._leasing.items() if k[1] == window_start}
            lease = self._leases.setdefault(key, [0, 0])
            lease[1] = max(lease[1], total)
            if granted > 0:
                lease[0] += granted - 1  # one token is this request's
                return
        retry_after = max(1, math.ceil(window_start + self.WINDOW_S - now))
        raise DomainError(
            ErrorKind.RATE_LIMITED, "RATE_LIMITED",
            f"Rate limit exceeded. Try again in {retry_after} seconds.",
            retry_after_s=retry_after, details={"limit_per_minute": limit},
        )
