"""The shared rate limit: exact across replicas, with leased tokens instead of a round trip per request."""

from __future__ import annotations

import pytest

from core.auth import Principal, RateLimiter
from core.errors import DomainError, ErrorKind
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import SubjectType
from settings import Settings

pytestmark = pytest.mark.unit


class CountingStore(InMemoryFleetStore):
    def __init__(self) -> None:
        super().__init__()
        self.round_trips = 0

    def hit(self, subject: str, window_start: int, count: int = 1) -> int:
        self.round_trips += 1
        return super().hit(subject, window_start, count)


def admitted(limiter: RateLimiter, subject: str = "key") -> bool:
    try:
        limiter.check(subject)
        return True
    except DomainError as exc:
        assert exc.kind is ErrorKind.RATE_LIMITED and exc.retry_after_s is not None
        return False


@pytest.mark.parametrize("limit", [1, 7, 100, 1000])
def test_two_replicas_admit_exactly_the_limit_between_them(limit: int) -> None:
    store, now = CountingStore(), [600.0]
    replicas = [RateLimiter(store, Settings(rate_limit_per_minute=limit), clock=lambda: now[0]) for _ in range(2)]
    outcomes = [admitted(replicas[i % 2]) for i in range(limit + 50)]
    assert outcomes.count(True) == limit
    assert not any(outcomes[limit + 10:])  # once refused, refused for the rest of the window
    now[0] += 60  # the next window starts afresh
    assert admitted(replicas[1])


def test_far_from_the_limit_most_requests_skip_the_store() -> None:
    store = CountingStore()
    limiter = RateLimiter(store, Settings(rate_limit_per_minute=100_000), clock=lambda: 600.0)
    assert all(admitted(limiter) for _ in range(5_000))
    assert store.round_trips <= 10


def test_keys_are_limited_separately() -> None:
    limiter = RateLimiter(InMemoryFleetStore(), Settings(rate_limit_per_minute=3), clock=lambda: 600.0)
    assert [admitted(limiter, "a") for _ in range(4)] == [True, True, True, False]
    assert admitted(limiter, "b")


def test_an_operator_key_has_its_own_higher_limit() -> None:
    """A service calling with the operator key is not held to the device limit of seed 000."""
    settings = Settings(rate_limit_per_minute=3, operator_rate_limit_per_minute=50)
    limiter = RateLimiter(InMemoryFleetStore(), settings, clock=lambda: 600.0)
    operator = Principal("key_op", SubjectType.OPERATOR, "operator")
    device = Principal("key_dev", SubjectType.DEVICE, "dev-1")
    for _ in range(50):
        limiter.check(operator.key_id, limiter.limit_for(operator))
    with pytest.raises(DomainError) as refused:
        limiter.check(operator.key_id, limiter.limit_for(operator))
    assert refused.value.details == {"limit_per_minute": 50}
    for _ in range(3):
        limiter.check(device.key_id, limiter.limit_for(device))
    with pytest.raises(DomainError):
        limiter.check(device.key_id, limiter.limit_for(device))


def test_concurrent_first_requests_of_a_key_are_not_refused_below_its_limit() -> None:
    """A gRPC stream's messages (or a burst of REST calls) reach the limiter together; each used to
    lease its own block from the store, so 21 requests leased 252 of 100 tokens and most were
    refused. One lease per key at a time: the others wait for it and spend from it."""
    import threading
    import time

    class SlowStore(CountingStore):
        def hit(self, subject: str, window_start: int, count: int = 1) -> int:
            time.sleep(0.02)  # a Cassandra round trip: long enough for every thread to arrive
            return super().hit(subject, window_start, count)

    store = SlowStore()
    limiter = RateLimiter(store, Settings(rate_limit_per_minute=100), clock=lambda: 600.0)
    start = threading.Barrier(40)
    outcomes: list[bool] = []

    def request() -> None:
        start.wait()
        outcomes.append(admitted(limiter))

    threads = [threading.Thread(target=request) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 40
    assert admitted(limiter) and store.round_trips <= 10
