"""hubbub.server.ratelimit: the per-connection token bucket and the failed-login
windows, on a clock the test moves by hand.

The module reads ``time.monotonic()``; the tests replace its ``time`` with a
manual clock, so no test waits for real time to pass.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hubbub.server.ratelimit
from hubbub.server.ratelimit import FailureWindow, TokenBucket


class Clock:
    def __init__(self, now: float = 1024.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    manual = Clock()
    monkeypatch.setattr(hubbub.server.ratelimit, "time", SimpleNamespace(monotonic=manual.monotonic))
    return manual


def takes(bucket: TokenBucket, attempts: int) -> int:
    return sum(bucket.take() for _ in range(attempts))


def test_a_full_bucket_allows_a_burst_and_then_refuses(clock: Clock) -> None:
    bucket = TokenBucket(rate=5.0, burst=10)
    assert takes(bucket, 10) == 10
    assert not bucket.take()


def test_tokens_come_back_at_the_rate(clock: Clock) -> None:
    bucket = TokenBucket(rate=4.0, burst=10)
    takes(bucket, 10)
    clock.advance(0.125)  # half a token
    assert not bucket.take()
    clock.advance(0.125)  # one
    assert bucket.take()
    assert not bucket.take()
    clock.advance(1.0)
    assert takes(bucket, 10) == 4


def test_refusals_do_not_cost_tokens(clock: Clock) -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take()
    for _ in range(50):
        assert not bucket.take()
        clock.advance(0.0078125)
    clock.advance(0.625)  # over a second since the last token was taken
    assert bucket.take()


def test_idle_time_saves_up_at_most_the_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=100.0, burst=3)
    takes(bucket, 3)
    clock.advance(3600)
    assert takes(bucket, 10) == 3


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=100),
    steps=st.lists(st.tuples(st.floats(min_value=0, max_value=2), st.integers(0, 20)), max_size=40),
)
def test_what_is_allowed_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    manual = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hubbub.server.ratelimit, "time", SimpleNamespace(monotonic=manual.monotonic))
        bucket = TokenBucket(rate, burst)
        start = manual.now
        allowed = 0
        for pause, attempts in steps:
            manual.advance(pause)
            allowed += takes(bucket, attempts)
            assert allowed <= burst + rate * (manual.now - start) + 1e-6
        manual.advance(burst / rate + 1)
        assert takes(bucket, burst + 1) == burst  # a long rest fills it, to the burst exactly


def test_a_key_is_blocked_at_the_limit_of_failures(clock: Clock) -> None:
    window = FailureWindow(limit=3, window_seconds=60)
    for _ in range(2):
        window.record("alice")
        clock.advance(1)
    assert not window.blocked("alice")
    window.record("alice")
    assert window.blocked("alice")
    assert not window.blocked("bob")


def test_failures_expire_one_by_one_as_the_window_slides(clock: Clock) -> None:
    window = FailureWindow(limit=2, window_seconds=8)
    window.record("k")  # t=0
    clock.advance(4)
    window.record("k")  # t=4
    assert window.blocked("k")
    clock.advance(3.875)  # t=7.875: both still inside
    assert window.blocked("k")
    clock.advance(0.125)  # t=8: the first is exactly one window old
    assert not window.blocked("k")
    window.record("k")  # t=8
    assert window.blocked("k")
    clock.advance(4)  # t=12: the t=4 failure is gone, the t=8 one counts alone
    assert not window.blocked("k")
    window.record("k")
    assert window.blocked("k")


def test_clear_forgets_a_keys_failures(clock: Clock) -> None:
    window = FailureWindow(limit=1, window_seconds=60)
    window.record("alice")
    window.record("bob")
    window.clear("alice")
    window.clear("nobody")
    assert not window.blocked("alice")
    assert window.blocked("bob")


def test_the_oldest_key_is_forgotten_when_the_table_is_full(clock: Clock) -> None:
    window = FailureWindow(limit=1, window_seconds=60, max_keys=3)
    for key in ("a", "b", "c"):
        window.record(key)
    window.record("d")
    assert [window.blocked(k) for k in "abcd"] == [False, True, True, True]
    window.record("b")  # a key already there takes no new slot
    assert window.blocked("c") and window.blocked("d")


def test_expired_keys_free_their_slots(clock: Clock) -> None:
    window = FailureWindow(limit=1, window_seconds=10, max_keys=2)
    window.record("a")
    window.record("b")
    clock.advance(11)
    assert not window.blocked("a")  # looking at an expired key drops it
    window.record("c")
    assert window.blocked("c")
    assert not window.blocked("b")
