"""Who is calling: API keys to principals, and the shared per-key rate limit.

Transports (REST today, gRPC later) parse the credential and call these; the rules live here.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.api_keys import hash_api_key, is_well_formed, key_id
from core.errors import DomainError, ErrorKind
from core.fleet.models import SubjectType
from core.fleet.store import FleetStore
from settings import Settings


@dataclass(frozen=True)
class Principal:
    key_id: str  # safe to log and audit; never the key
    subject_type: SubjectType
    subject_id: str  # device_id for devices, "operator" for the admin key

    @property
    def is_operator(self) -> bool:
        return self.subject_type is SubjectType.OPERATOR

    def require_operator(self) -> None:
        if not self.is_operator:
            raise DomainError(ErrorKind.FORBIDDEN, "FORBIDDEN", "This operation needs an operator API key.")

    def require_device(self, device_id: str) -> None:
        """A device key acts only as its own device; operators may act on any device."""
        if self.is_operator or self.subject_id == device_id:
            return
        raise DomainError(ErrorKind.FORBIDDEN, "FORBIDDEN", "This API key cannot act for another device.")


def _unauthenticated(message: str = "Invalid or missing API key.") -> DomainError:
    return DomainError(
        ErrorKind.UNAUTHENTICATED, "UNAUTHORIZED", message, hint="Send 'Authorization: Bearer sk_live_...'."
    )


class Authenticator:
    def __init__(self, store: FleetStore, settings: Settings) -> None:
        self.store = store
        admin = settings.admin_api_key.get_secret_value()
        self._admin_hash = hash_api_key(admin) if admin else None

    def try_authenticate(self, key: str | None) -> Principal | None:
        """Answer without I/O (safe on the event loop) for a missing or malformed key and for the
        operator key; None when the key must be looked up in the store (``lookup``)."""
        if not key:
            raise _unauthenticated()
        if not is_well_formed(key):
            raise _unauthenticated("Malformed API key: expected sk_live_ followed by 32 letters or digits.")
        if self._admin_hash is not None and hmac.compare_digest(hash_api_key(key), self._admin_hash):
            return Principal(key_id(key), SubjectType.OPERATOR, "operator")
        return None

    def authenticate(self, key: str | None) -> Principal:
        principal = self.try_authenticate(key)
        if principal is not None:
            return principal
        assert key is not None  # try_authenticate refused a missing key
        return self.lookup(key)

    def lookup(self, key: str) -> Principal:
        """The store's answer for a well-formed key that is not the operator's (blocking I/O)."""
        record = self.store.get_api_key(hash_api_key(key))
        if record is None:
            raise _unauthenticated()
        if record.revoked_at is not None:
            raise _unauthenticated("This API key has been revoked.")
        return Principal(record.key_id, record.subject_type, record.subject_id)


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
        self.operator_limit = settings.operator_rate_limit_per_minute
        self.clock = clock
        self._lock = threading.Lock()
        # (subject, window_start) -> [tokens left here, shared count last seen]
        self._leases: dict[tuple[str, int], list[int]] = {}

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
        """Per kind of caller: a device keeps seed 000's budget; an operator key (what services and
        benchmarks call with today) gets its own, high one."""
        return self.operator_limit if principal.is_operator else self.limit

    def check(self, subject: str, limit: int | None = None) -> None:
        """Count one request of ``subject`` against ``limit`` per minute (default: the device limit)."""
        limit = limit or self.limit
        if self.try_spend(subject):
            return
        now = self.clock()
        window_start = int(now // self.WINDOW_S) * self.WINDOW_S
        key = (subject, window_start)
        with self._lock:
            lease = self._leases.get(key)
            seen = lease[1] if lease is not None else 0
        block = max(1, min(self.MAX_BLOCK, (limit - seen) // self.BLOCK_SHARE))
        total = self.store.hit(subject, window_start, block)
        granted = max(0, min(block, limit - (total - block)))
        with self._lock:
            if len(self._leases) > 10_000:  # old windows: drop everything not of this window
                self._leases = {k: v for k, v in self._leases.items() if k[1] == window_start}
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
