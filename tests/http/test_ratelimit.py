"""Token buckets on a fake clock: burst, refill, Retry-After's source, and memory that stays bounded."""

from __future__ import annotations

import pytest

from service.http.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=2, burst=3, max_clients=10, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # empty: one token comes back every 1/2 s
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)  # denied requests do not cost a token
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)


def test_refill_stops_at_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=10, burst=2, max_clients=10, clock=clock)
    limiter.acquire("a")
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(3)][2] > 0  # an hour idle is still only a burst of 2


def test_clients_have_their_own_buckets() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=1, burst=1, max_clients=10, clock=clock)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_memory_is_bounded_by_max_clients() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=1, burst=5, max_clients=100, clock=clock)
    for i in range(10_000):
        limiter.acquire(f"client-{i}")
        assert len(limiter) <= 100
    assert len(limiter) == 100
    # the least recently seen went first: the latest clients are the ones remembered (their bucket is not full)
    for _ in range(4):
        limiter.acquire("client-9999")
    assert limiter.acquire("client-9999") > 0


def test_idle_buckets_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=10, burst=20, max_clients=1000, clock=clock)
    for i in range(50):
        limiter.acquire(f"client-{i}")
    assert len(limiter) == 50
    clock.now += 2.0  # burst / rate: every one of those buckets is full again, as good as new
    limiter.acquire("late")
    assert len(limiter) == 1


def test_a_busy_client_keeps_its_bucket_while_idle_ones_go() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_second=1, burst=3, max_clients=1000, clock=clock)
    for _ in range(3):
        limiter.acquire("busy")
    limiter.acquire("idle")
    clock.now += 2.9  # not yet full
    assert limiter.acquire("busy") == 0.0
    clock.now += 0.2  # "idle" is full now; "busy" was seen 0.2 s ago
    limiter.acquire("other")
    assert len(limiter) == 2


@pytest.mark.parametrize(("rate", "burst", "clients"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int, clients: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, clients)
