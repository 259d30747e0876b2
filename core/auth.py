"""Who is calling: API keys to principals, and the shared per-key rate limit.

Transports (REST today, gRPC later) parse the credential and call these; the rules live here.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.api_keys import hash_api_key, is_well_formed, key_id
from core.errors import DomainError, ErrorKind
from core.fleet.models import SubjectType
from core.fleet.store import FleetStore
from core.settings import Settings


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

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise _unauthenticated()
        if not is_well_formed(key):
            raise _unauthenticated("Malformed API key: expected sk_live_ followed by 32 letters or digits.")
        digest = hash_api_key(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(key_id(key), SubjectType.OPERATOR, "operator")
        record = self.store.get_api_key(digest)
        if record is None:
            raise _unauthenticated()
        if record.revoked_at is not None:
            raise _unauthenticated("This API key has been revoked.")
        return Principal(record.key_id, record.subject_type, record.subject_id)


class RateLimiter:
    """Fixed one-minute windows counted in the shared store, so every replica sees every hit."""

    WINDOW_S = 60

    def __init__(self, store: FleetStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.limit = settings.rate_limit_per_minute
        self.clock = clock

    def check(self, subject: str) -> None:
        now = self.clock()
        window_start = int(now // self.WINDOW_S) * self.WINDOW_S
        count = self.store.hit(subject, window_start, self.WINDOW_S)
        if count > self.limit:
            retry_after = max(1, math.ceil(window_start + self.WINDOW_S - now))
            raise DomainError(
                ErrorKind.RATE_LIMITED, "RATE_LIMITED",
                f"Rate limit exceeded. Try again in {retry_after} seconds.",
                retry_after_s=retry_after, details={"limit_per_minute": self.limit},
            )
