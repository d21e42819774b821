"""Late answers, stopped servers, racing renewals and stalled holders, against a real memcached.

Each test reproduces one probe: a proxy that delays memcached's answer, a
stopped server, releases racing renewals, a blocking on_lost callback, a
holder that holds the GIL past its lease, a restart under a holder, huge keys
and the argument checks of ``threading``.
"""

from __future__ import annotations

import ctypes
import gc
import random
import threading
import time
import tracemalloc

import pytest

from unimr.memcachedlock import registry
from unimr.memcachedlock.backends.memcached import MemcachedBackend, carries_token
from unimr.memcachedlock.backends.pool import ClientPool
from unimr.memcachedlock.config import parse_server
from unimr.memcachedlock.errors import BackendUnavailable, InvalidKey, TimeoutTooLarge
from unimr.memcachedlock.lease import renew_period
from unimr.memcachedlock.locks import Lock, RLock
from unimr.memcachedlock.renewer import MAX_CHECK_PERIOD

from delay_proxy import DelayProxy


def direct_backend(server) -> MemcachedBackend:
    """A second client of the same server: another process, as far as waiting is concerned."""
    return MemcachedBackend([parse_server(server.address)], io_timeout=2.0)


def stored_token(server, name: str) -> bytes | None:
    """The lock item as memcached holds it (read over a fresh client)."""
    backend = direct_backend(server)
    try:
        return backend.servers[0].call(ClientPool.get, backend.prefix + name)
    finally:
        backend.close()


def eventually(condition, limit: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``limit`` seconds passed (the reaper works asynchronously)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- 1. an add whose answer comes late -------------------------------------------------------

def test_late_add_reply_is_resolved_by_the_token_not_by_deleting(memcached, monkeypatch):
    with DelayProxy(memcached.port) as proxy:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", proxy.address)
        monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "0.3")
        registry.reset()
        first = Lock("late-add", timeout=30)
        proxy.delay_next_reply(0.6)
        assert first.acquire(blocking=False)
        assert proxy.delayed == 1
        other = direct_backend(memcached)
        try:
            for _ in range(3):  # any deferred clean-up has had its chance to run
                assert carries_token(stored_token(memcached, first.name), first.lease.token)
                assert not Lock("late-add", backend=other).acquire(blocking=False)
                time.sleep(0.3)
            first.release()
            assert stored_token(memcached, first.name) is None
        finally:
            other.close()


def test_add_while_memcached_is_stopped_never_reports_an_absent_lock(private_memcached, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "0.3")
    monkeypatch.setenv("MEMCACHEDLOCK_RETRY", "0.1")
    registry.reset()
    outcomes = {"held": 0, "not held": 0, "unavailable": 0}
    for attempt in range(6):
        name = "stopped-%d" % attempt
        lock = Lock(name, timeout=30)
        private_memcached.stop()
        threading.Timer(0.3 + 0.03 * attempt, private_memcached.cont).start()
        try:
            got = lock.acquire(blocking=False)
        except BackendUnavailable:
            got = None
        time.sleep(0.5 - 0.03 * attempt)  # the server runs again
        if got:
            outcomes["held"] += 1
            assert carries_token(stored_token(private_memcached, lock.name), lock.lease.token)
            assert not Lock(name, backend=direct_backend(private_memcached)).acquire(blocking=False)
            lock.release()
        else:
            outcomes["not held" if got is False else "unavailable"] += 1
            # an add that landed although the caller was told otherwise is removed by the reaper
            assert eventually(lambda lock=lock: stored_token(private_memcached, lock.name) is None)
    assert outcomes["held"] >= 1, outcomes


# -- 3. release against renewal ----------------------------------------------------------------

def test_release_racing_renewal_removes_the_item_and_reports_no_loss(memcached):
    # memcached counts TTLs on a clock that ticks once a second from its main thread: on a loaded
    # machine a tick comes late and a 2 s item can die within 0.4 s (seen in CI).  A 3 s lease
    # (3 s items, renewed every 0.67 s) keeps that outside effect out of a test of the race.
    ttl = 3.0
    period = renew_period(ttl)
    losses = []
    on_lost_calls = []
    names = []

    def worker(number: int) -> None:
        rng = random.Random(number)
        for round_ in range(8):
            lock = Lock("race-%d-%d" % (number, round_), timeout=ttl, on_lost=on_lost_calls.append)
            names.append(lock.name)
            assert lock.acquire(timeout=5)
            # release right when the renewer renews (its first renewal is due after ``period``)
            time.sleep(period + rng.uniform(-0.004, 0.004))
            lock.release()
            if lock.lost:
                losses.append(lock.name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.1)
    assert losses == []
    assert on_lost_calls == []
    left = [name for name in names if stored_token(memcached, name) is not None]
    assert left == []


# -- 4. the renewer ------------------------------------------------------------------------------

def test_blocking_on_lost_callback_does_not_stall_other_renewals(memcached):
    release_callback = threading.Event()
    called = threading.Event()

    def blocking(lease) -> None:
        called.set()
        release_callback.wait(8)

    # 3 s leases: a renewal may be 1.3 s late (a loaded machine) before a lease lapses
    victim = Lock("cb-victim", timeout=3, on_lost=blocking)
    healthy = Lock("cb-healthy", timeout=3)
    assert victim.acquire(blocking=False)
    assert healthy.acquire(blocking=False)
    try:
        assert victim.backend.break_lock(victim.name)
        assert called.wait(3), "the renewer did not notice the broken lock"
        time.sleep(3.2)  # longer than the healthy lock's item lives without renewal
        assert not healthy.lost
        assert carries_token(stored_token(memcached, healthy.name), healthy.lease.token)
        assert not Lock("cb-healthy", backend=direct_backend(memcached)).acquire(blocking=False)
    finally:
        release_callback.set()
        healthy.release()
        victim.release()


def test_holder_learns_at_once_that_a_stall_outlived_its_lease(memcached):
    seen = []
    lock = Lock("gil-stall", timeout=2, on_lost=seen.append)
    assert lock.acquire(blocking=False)
    lease = lock.lease
    # C code holding the GIL for longer than the item's shortest life (1 s of 2):
    # the renewer cannot run.
    ctypes.PyDLL(None).usleep(1_300_000)
    assert lock.lost, "the holder must see the lapse before the renewer has run"
    assert eventually(lambda: seen == [lease]), "the renewer did not tell the on_lost callback"
    lock.release()
    assert lock.lost
    assert stored_token(memcached, lock.name) is None


# -- 8. memory ------------------------------------------------------------------------------------

def test_key_cache_is_bounded_by_bytes():
    from unimr.memcachedlock.keys import lock_name

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(60):
            lock_name(b"%04d" % number + b"x" * (1 << 20))  # 60 distinct 1 MB keys
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 5 * (1 << 20), "the key cache kept %d bytes" % kept


# -- 9. deviations from threading -----------------------------------------------------------------

def outcome(call):
    try:
        return "returned", call()
    except BaseException as exc:  # noqa: B902 - the type is what is compared
        return "raised", type(exc)


@pytest.mark.parametrize("kind,model", [(Lock, threading.Lock), (RLock, threading.RLock)])
@pytest.mark.parametrize("arguments", [
    {"timeout": True}, {"blocking": "no"}, {"blocking": 1.5}, {"blocking": None},
    {"timeout": 10 ** 400}, {"timeout": 1e300}, {"timeout": "1"}, {"blocking": 2, "timeout": 0.01},
], ids=lambda arguments: ",".join("%s=%.12r" % item for item in arguments.items()))
def test_acquire_arguments_as_threading(memcached, kind, model, arguments):
    ours, theirs = kind("args", timeout=5), model()
    expected = outcome(lambda: theirs.acquire(**arguments))
    got = outcome(lambda: ours.acquire(**arguments))
    if expected[0] == "raised":
        assert got[0] == "raised" and issubclass(got[1], expected[1]), (got, expected)
    else:
        assert got == expected
        ours.release()
    if arguments.get("timeout") in (10 ** 400, 1e300):
        assert got[1] is TimeoutTooLarge


def test_int_key_too_long_for_decimal_is_an_invalid_key():
    with pytest.raises(InvalidKey, match="int of"):
        Lock(10 ** 5000)
    assert Lock(10 ** 4000).name  # within Python's digit limit: a key like any other


# -- 10. restart or eviction under a holder -------------------------------------------------------

def test_holder_of_a_long_lease_learns_of_a_restart_within_the_check_period(private_memcached):
    lock = Lock("restarted", timeout=30)
    assert lock.acquire(blocking=False)
    private_memcached.restart()
    # the renewal (every MAX_CHECK_PERIOD seconds, not half the 30 s lease) finds the lock gone
    assert eventually(lambda: lock.lost, MAX_CHECK_PERIOD + 2.0)
    lock.release()
