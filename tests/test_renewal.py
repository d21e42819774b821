"""Lease renewal and lost locks, on every store (a real memcached, real files, the fallback of both)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from unimr.memcachedlock import registry
from unimr.memcachedlock.locks import Lock
from unimr.memcachedlock.renewer import get_renewer

from introspection import waiting_keys


def test_renewal_keeps_a_long_hold(store):
    # 3 s, not 2: a late tick of memcached's once-a-second clock can end a 2 s item early
    lock = Lock("long-hold", timeout=3)
    lock.acquire()
    try:
        first = lock.backend.holder(lock.name).expires
        time.sleep(4.2)
        assert not lock.lost
        assert not Lock("long-hold").acquire(blocking=False)
        holder = lock.backend.holder(lock.name)
        assert holder.token == lock.lease.token
        assert holder.expires > first + 1
    finally:
        lock.release()


def test_renewal_compares_the_token_and_reports_loss(store, caplog):
    caplog.set_level(logging.WARNING)
    seen = []
    lock = Lock("stolen", timeout=2, on_lost=seen.append)
    lock.acquire()
    lease = lock.lease
    assert lock.backend.break_lock(lock.name)
    thief = Lock("stolen", timeout=30)
    assert thief.acquire(blocking=False)
    deadline = time.monotonic() + 3
    while not lock.lost:
        assert time.monotonic() < deadline, "renewer did not notice the loss"
        time.sleep(0.05)
    assert seen == [lease]
    assert any("lost lock" in r.getMessage() and "stolen" in r.getMessage() for r in caplog.records)
    # the renewal did not touch the thief's lock, nor does the late release
    lock.release()
    assert lock.backend.holder(thief.name).token == thief.lease.token
    thief.release()


def test_renewal_of_file_locks_reports_loss(lock_dir, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    registry.reset()
    seen = []
    lock = Lock("file-stolen", timeout=1, on_lost=seen.append)
    lock.acquire()
    lock.backend.break_lock(lock.name)
    deadline = time.monotonic() + 3
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lock.lost
    lock.release()


def test_failing_callback_is_logged_not_raised(store, caplog):
    def boom(lease):
        raise RuntimeError("callback failed")

    lock = Lock("cb", timeout=2, on_lost=boom)
    lock.acquire()
    lock.backend.break_lock(lock.name)
    deadline = time.monotonic() + 3
    while not lock.lost:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.05)
    assert any("on_lost callback" in r.getMessage() for r in caplog.records)
    lock.release()


def test_released_leases_leave_the_renewer(store):
    before = get_renewer().pending()
    locks = [Lock("r%d" % i, timeout=30) for i in range(20)]
    for lock in locks:
        lock.acquire()
    assert get_renewer().pending() >= before + 20
    for lock in locks:
        lock.release()
    assert get_renewer().pending() == before


@pytest.mark.needs("memcached")  # stops the memcached server
def test_renewal_during_outage_is_retried_and_not_lost(store, private_memcached, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", private_memcached.address)  # the test's own, to stop
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", store)
    monkeypatch.setenv("MEMCACHEDLOCK_RETRY", "0.2")
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "0.3")
    registry.reset()
    lock = Lock("hiccup", timeout=4)
    lock.acquire()
    private_memcached.stop()
    time.sleep(1.8)
    private_memcached.cont()
    time.sleep(1.5)
    assert not lock.lost
    assert lock.backend.holder(lock.name).token == lock.lease.token
    lock.release()


@pytest.mark.parametrize("ttl", [0.5, 2, 30])
def test_short_leases_get_a_store_ttl_of_at_least_two_seconds(memcached, ttl):
    from unimr.memcachedlock.lease import renew_period, store_ttl

    assert store_ttl(ttl) >= 2
    assert renew_period(ttl) < store_ttl(ttl) - 0.5


def _hand_over_to_shorter_lock(name: str) -> tuple[Lock, object]:
    """A lock of 2 s that received, still held, the lease of a lock of 30 s.

    The handover takes one round trip on the connection that stored the lock;
    when the waiter's poll has that connection just then, the lock is released
    and taken anew instead, so this tries again (a few times).
    """
    for _ in range(5):
        long_lock = Lock(name, timeout=30)
        short_lock = Lock(name, timeout=2, interval=1.0)
        long_lock.acquire()
        waiter = threading.Thread(target=short_lock.acquire, kwargs={"timeout": 5})
        waiter.start()
        queued_by = time.monotonic() + 5
        while not waiting_keys() and time.monotonic() < queued_by:
            time.sleep(0.01)
        time.sleep(0.2)  # the waiter's polls have backed off
        lease = long_lock.lease
        long_lock.release()
        waiter.join(5)
        if short_lock.lease is lease:
            return short_lock, lease
        short_lock.release()
    raise AssertionError("the lock was never handed over in 5 tries")


@pytest.mark.needs("waiter_board")  # the hand-over of a held lock to a waiting thread
def test_a_lease_handed_to_a_shorter_lock_is_renewed_on_the_shorter_schedule(store):
    # The releaser's 30 s lease was due for renewal 2 s after it was taken; handed to a
    # lock of 2 s (its item sure to live only 1 s) it must be renewed sooner than that.
    short_lock, lease = _hand_over_to_shorter_lock("handed-shorter")
    try:
        time.sleep(1.6)
        assert not short_lock.lost
        assert short_lock.backend.holder(short_lock.name).token == lease.token
    finally:
        short_lock.release()
