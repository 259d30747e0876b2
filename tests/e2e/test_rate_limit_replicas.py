"""The per-key rate limit holds across two ingress replicas: they share the window in Cassandra."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import RunningSystem, client_address, ingress_replica

pytestmark = pytest.mark.e2e


def test_limit_is_shared_by_two_replicas(system: RunningSystem, second_replica: str) -> None:
    limit = system.settings.rate_limit_per_minute
    # Stay inside one fixed window: start early in a minute.
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    device_id = f"{system.settings.topic_prefix}rl-device"
    key = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                     headers=client_address()).json()["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    codes: list[int] = []
    retry_after: list[str] = []
    with httpx.Client(timeout=10) as http:
        for i in range(limit + 20):
            base = system.base_url if i % 2 == 0 else second_replica
            response = http.get(f"{base}/api/v1/devices/{device_id}", headers=headers)
            codes.append(response.status_code)
            if response.status_code == 429:
                retry_after.append(response.headers["Retry-After"])
                assert response.json()["error_code"] == "RATE_LIMITED"
    assert codes.count(200) == limit, codes
    assert codes.count(429) == 20
    assert all(1 <= int(value) <= 60 for value in retry_after)


# How a proxy names the client: X-Forwarded-For (uvicorn) and RFC 7239 Forwarded (api/forwarded.py).
CLIENT_ADDRESS_HEADERS: dict[str, Callable[[str], dict[str, str]]] = {
    "x-forwarded-for": lambda address: {"X-Forwarded-For": address},
    "forwarded": lambda address: {"Forwarded": f'for="{address}";proto=http'},
}


def _registrations(url: str, count: int, header: str) -> list[int]:
    """``count`` registrations, each claiming a client address of its own in ``header``."""
    codes = []
    for _ in range(count):
        claimed = f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"  # RFC 2544: never real
        response = httpx.post(f"{url}/api/v1/devices/register", json={"device_id": f"xff-{uuid.uuid4().hex[:10]}"},
                              headers=CLIENT_ADDRESS_HEADERS[header](claimed), timeout=30)
        codes.append(response.status_code)
    return codes


@pytest.mark.parametrize("header", sorted(CLIENT_ADDRESS_HEADERS))
@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_a_client_address_header_is_believed_only_from_a_trusted_proxy(system: RunningSystem, trusted: str,
                                                                        header: str) -> None:
    """Registration is limited per client address. Untrusted, the header is ignored and every
    registration from this host shares the peer's budget (3 a minute here); trusted, each claimed
    address has its own."""
    with ingress_replica(system, f"{header}-{trusted or 'none'}", TRIBUTARY_TRUSTED_PROXIES=trusted,
                         TRIBUTARY_RATE_LIMIT_PER_MINUTE="3") as url:
        codes = _registrations(url, 4, header)
    if trusted:
        assert codes == [201] * 4
    else:
        assert 429 in codes and set(codes) <= {201, 429}, codes


def test_the_operator_key_is_not_held_to_the_device_limit(system: RunningSystem) -> None:
    """What a backend service calls with today: past the device limit in one minute, still answered."""
    limit = system.settings.rate_limit_per_minute
    device_id = f"{system.settings.topic_prefix}rl-op-{uuid.uuid4().hex[:6]}"
    assert httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                      headers=client_address(), timeout=30).status_code == 201
    operator = {"Authorization": f"Bearer {system.admin_key}"}
    with httpx.Client(timeout=10) as http:
        codes = [http.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=operator).status_code
                 for _ in range(limit + 50)]
    assert codes == [200] * (limit + 50)
