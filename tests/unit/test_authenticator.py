"""Authentication: what is answered on the event loop, and what must ask the store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from core.api_keys import hash_api_key, key_id, new_api_key
from core.auth import Authenticator
from core.errors import DomainError, ErrorKind
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import ApiKeyRecord, SubjectType
from settings import Settings

pytestmark = pytest.mark.unit
ADMIN = new_api_key()


class CountingStore(InMemoryFleetStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        self.lookups += 1
        return super().get_api_key(key_hash)


def authenticator_with_device(revoked: bool = False) -> tuple[Authenticator, CountingStore, str]:
    store, key = CountingStore(), new_api_key()
    now = datetime.now(UTC)
    store.put_api_key(ApiKeyRecord(hash_api_key(key), key_id(key), SubjectType.DEVICE, "dev-1", now,
                                   revoked_at=now if revoked else None))
    return Authenticator(store, Settings(admin_api_key=SecretStr(ADMIN))), store, key


def test_the_operator_key_is_answered_without_the_store() -> None:
    auth, store, _ = authenticator_with_device()
    principal = auth.try_authenticate(ADMIN)
    assert principal is not None and principal.is_operator and principal.key_id == key_id(ADMIN)
    assert auth.authenticate(ADMIN) == principal
    assert store.lookups == 0


@pytest.mark.parametrize(("key", "message"), [(None, "Invalid or missing"), ("", "Invalid or missing"),
                                              ("sk_live_short", "Malformed"), ("Bearer x", "Malformed")])
def test_missing_and_malformed_keys_are_refused_without_the_store(key: str | None, message: str) -> None:
    auth, store, _ = authenticator_with_device()
    for call in (auth.try_authenticate, auth.authenticate):
        with pytest.raises(DomainError) as raised:
            call(key)
        assert raised.value.kind is ErrorKind.UNAUTHENTICATED and message in raised.value.message
    assert store.lookups == 0


def test_a_device_key_is_left_to_the_store_and_found_there() -> None:
    auth, store, key = authenticator_with_device()
    assert auth.try_authenticate(key) is None
    principal = auth.authenticate(key)
    assert (principal.subject_type, principal.subject_id, store.lookups) == (SubjectType.DEVICE, "dev-1", 1)


def test_revoked_and_unknown_device_keys_are_refused_by_the_store() -> None:
    auth, store, key = authenticator_with_device(revoked=True)
    with pytest.raises(DomainError, match="revoked"):
        auth.authenticate(key)
    with pytest.raises(DomainError, match="Invalid or missing"):
        auth.authenticate(new_api_key())
    assert store.lookups == 2
