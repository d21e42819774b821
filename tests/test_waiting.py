"""Waiting for a busy lock: shared pollers, bounded load, fair turns, dead waiters.

Every test runs on each store that has what it needs: the in-process queue on all
three, announcements and hand-overs where a store has a waiter board, loads read
from memcached's ``stats`` counters where the store talks to memcached.  Turns
come from real threads and processes.  No test asserts a speed: the benchmarks
in ``benchmarks/`` measure that.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from unimr.memcachedlock import Lock, get_backend, registry, waiting
from unimr.memcachedlock.backends import records
from unimr.memcachedlock.config import get_settings
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.tools import bench

from introspection import waiting_keys


def _requests(server) -> dict[str, int]:
    stats = server.stats()
    return {name: int(stats.get(name, 0)) for name in bench.REQUEST_COUNTERS}


def _total(server) -> int:
    return sum(_requests(server).values())


def _another_store():
    """A second object of the test's store (same servers, same lock directory): another process to ``waiting``."""
    return registry.make_backend(get_settings())


@pytest.fixture
def served(store, memcached, monkeypatch):
    """How many requests the test's store has served so far, as a function: memcached's request
    counters where the store talks to memcached, else what a waiter asks of the file store: its
    acquisition attempts and its looks at and writes to the waiter board."""
    backend = get_backend()
    if hasattr(backend, "servers"):
        return lambda: _total(memcached)
    attempts = []

    def counting(obj, method):
        original = getattr(obj, method)

        def counted(*args, **kw):
            attempts.append(method)
            return original(*args, **kw)

        monkeypatch.setattr(obj, method, counted)

    counting(backend, "acquire")
    for method in ("peek_want", "put_want"):
        counting(backend.waiter_board, method)
    return lambda: len(attempts)


def _wait_for_requests(served, threads: int, seconds: float, key: str) -> int:
    """Requests sent while ``threads`` threads of this process wait ``seconds`` for a held ``key``,
    from 0.15 s after they start until 0.1 s before their timeout: the polling, not each thread's
    own first try (made as it arrives, before it finds the queue) nor its last (as it leaves)."""
    holder = Lock(key, backend=_another_store())
    assert holder.acquire(blocking=False)
    results = []
    start = threading.Barrier(threads + 1)

    def waiter() -> None:
        lock = Lock(key)
        start.wait()
        results.append(lock.acquire(timeout=seconds))

    pool = [threading.Thread(target=waiter) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    started = time.monotonic()
    time.sleep(0.15)
    before = served()
    time.sleep(max(0.0, started + seconds - 0.1 - time.monotonic()))
    after = served()
    for t in pool:
        t.join()
    holder.release()
    assert results == [False] * threads
    return after - before


@pytest.mark.needs("memcached")  # counts the requests memcached served
def test_uncontended_pair_reads_the_announcement_in_the_release_round_trip(store, memcached):
    lock = Lock("one-round-trip")
    lock.acquire()
    before = _requests(memcached)
    lock.release()
    lock.acquire()
    lock.release()
    after = _requests(memcached)
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    # per pair: ms in add mode (cmd_set), then one round trip of md (delete_hits) and
    # mg of the announcement (cmd_get); the first release is the same round trip.
    assert delta == {"cmd_get": 2, "cmd_set": 1, "delete_hits": 2}, delta
    assert get_backend().holder(lock.name) is None


def test_threads_of_one_process_share_one_poller(served):
    one = _wait_for_requests(served, 1, 1.2, "shared-poller-1")
    many = _wait_for_requests(served, 20, 1.2, "shared-poller-20")
    assert one > 0
    assert many <= 1.5 * one + 10, (one, many)


def test_a_waiter_starts_at_most_at_1000_requests_a_second_and_backs_off(served):
    key = "backoff"
    holder = Lock(key, backend=_another_store())
    assert holder.acquire(blocking=False)
    lock = Lock(key, interval=0.05)
    marks = []

    def sample() -> None:
        start = time.monotonic()
        for at in (0.2, 0.7, 1.3):
            time.sleep(max(0.0, start + at - time.monotonic()))
            marks.append((time.monotonic(), served()))

    sampler = threading.Thread(target=sample)
    t0, c0 = time.monotonic(), served()
    sampler.start()
    assert lock.acquire(timeout=1.4) is False
    sampler.join()
    holder.release()
    (t1, c1), (t2, c2), (t3, c3) = marks
    early = (c1 - c0) / (t1 - t0)
    late = (c3 - c2) / (t3 - t2)
    assert early <= 1000, early
    # polls every ~interval (lock + announcement where the store has a waiter board) plus an
    # announcement refresh every 0.5 s
    assert 5 <= late <= 2 * 2 / 0.05 + 10, late
    assert late < early


def test_threads_take_turns_in_order(store):
    order = []
    rounds = 8
    start = threading.Barrier(3)

    def worker(who: int) -> None:
        lock = Lock("fifo", interval=0.05)
        start.wait()
        for _ in range(rounds):
            assert lock.acquire(timeout=10)
            order.append(who)
            time.sleep(0.002)
            lock.release()

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert sorted(order) == sorted(list(range(3)) * rounds)
    # while all three take part, nobody goes twice in a row, and the turns cycle
    steady = order[: 3 * (rounds - 1)]
    repeats = sum(1 for a, b in zip(steady, steady[1:], strict=False) if a == b)
    assert repeats <= 1, order
    assert waiting_keys() == 0


@pytest.mark.stores("memcached", reason="tools.bench runs its own memcached stores")
def test_two_processes_take_turns(store, memcached):
    result = bench.handoff(memcached.address, "process", "ours", duration=0.4, hold=0.005)
    assert result["turns"] >= 20, result
    assert result["alternation"] >= 0.8, result
    assert min(result["shares"].values()) >= 0.4 * result["turns"], result


@pytest.mark.stores("memcached", reason="tools.bench runs its own memcached stores")
def test_two_threads_take_turns(store, memcached):
    result = bench.handoff(memcached.address, "thread", "ours", duration=0.3, hold=0.005)
    assert result["turns"] >= 20, result
    assert result["alternation"] >= 0.8, result
    assert min(result["shares"].values()) >= 0.4 * result["turns"], result


@pytest.mark.stores("memcached", reason="tools.bench runs its own memcached stores")
def test_many_waiting_threads_in_processes_cost_what_single_waiters_cost(store, memcached):
    single = bench.waiting_load(memcached.address, processes=2, threads=1, wait=0.8, first=0.2)
    crowd = bench.waiting_load(memcached.address, processes=2, threads=12, wait=0.8, first=0.2)
    assert single["requests"] > 0
    assert crowd["requests"] <= 1.5 * single["requests"] + 20, (single, crowd)


def _announce(memcached, key: str, host: bytes, address: bytes, pause: float = 0.01) -> None:
    board = get_backend().waiter_board
    want = records.Want(os.urandom(8).hex(), host, 4242, time.time() - 10, pause, address)
    assert board.put_want(lock_name(key), want.encode(), None, add=True)


@pytest.mark.needs("waiter_board")
def test_a_dead_waiter_on_this_host_is_not_waited_for(store, memcached):
    key = "dead-local-waiter"
    lock = Lock(key)
    assert lock.acquire()
    _announce(memcached, key, records.WANT_HOST, b"\0unimr.memcachedlock/nobody-listens-here")
    lock.release()
    assert not waiting.must_queue(get_backend(), lock.name)
    assert lock.acquire(blocking=False)
    lock.release()


@pytest.mark.needs("waiter_board")
def test_a_silent_remote_waiter_gets_a_bounded_yield_and_never_the_lock(store, memcached):
    key = "remote-waiter"
    lock = Lock(key)
    assert lock.acquire()
    _announce(memcached, key, b"some-other-host", b"\0elsewhere", pause=0.01)
    lock.release()
    backend = get_backend()
    # the lock is free (nobody was handed it), and this process yields it for a moment
    assert backend.holder(lock.name) is None
    assert waiting.must_queue(backend, lock.name)
    assert lock.acquire(timeout=5)
    assert backend.holder(lock.name).token == lock.lease.token
    lock.release()


def test_a_queued_thread_times_out_and_the_queue_moves_on(store):
    key = "queue-timeout"
    holder = Lock(key, backend=_another_store())
    assert holder.acquire()
    first_result = []
    first_lock = Lock(key)
    first = threading.Thread(target=lambda: first_result.append(first_lock.acquire(timeout=10)))
    first.start()
    while not waiting_keys():
        time.sleep(0.005)
    assert Lock(key).acquire(timeout=0.2) is False
    holder.release()
    first.join()
    assert first_result == [True]
    assert get_backend().holder(lock_name(key)).token == first_lock.lease.token
    first_lock.release()
    assert waiting_keys() == 0


@pytest.mark.needs("waiter_board")
def test_announcements_are_withdrawn_when_the_waiter_gets_the_lock(store):
    key = "withdrawn"
    holder = Lock(key, backend=_another_store())
    assert holder.acquire()
    lock = Lock(key)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=10)))
    waiter.start()
    name = lock_name(key)
    board = get_backend().waiter_board
    deadline = time.monotonic() + 5
    while board.peek_want(name)[1] is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert board.peek_want(name)[1] is not None
    holder.release()
    waiter.join()
    assert got == [True]
    lock.release()
    assert board.peek_want(name) == (False, None, None)


def _handover_round(memcached, key: str) -> bool:
    """Release while a thread of this process waits; True if the lock was handed over."""
    holder = Lock(key)
    assert holder.acquire()
    token = get_backend().holder(holder.name).token
    got = []
    waiter_lock = Lock(key, timeout=12)

    def waiter() -> None:
        got.append(waiter_lock.acquire(timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while not waiting_keys() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert waiting_keys() == 1
    time.sleep(0.05)
    before = _requests(memcached)
    holder.release()
    thread.join(10)
    after = _requests(memcached)
    assert got == [True]
    with pytest.raises(RuntimeError):
        holder.release()
    assert Lock(key).acquire(blocking=False) is False
    record = get_backend().holder(holder.name)
    assert record.token == waiter_lock.lease.token and record.thread == thread.ident
    handed = waiter_lock.lease.token == token
    if handed:
        assert after.get("delete_hits", 0) == before.get("delete_hits", 0), "the lock never became free"
        assert waiter_lock.lease.ttl == 12 and waiter_lock.lease.on_lost is None
    waiter_lock.release()
    assert get_backend().holder(holder.name) is None
    return handed


@pytest.mark.needs("waiter_board", "memcached")  # counts memcached's deletes
def test_release_hands_the_lock_to_a_waiting_thread_of_the_same_process(store, memcached):
    """With a thread of this process queued and no other process announced, the lock
    changes threads without becoming free: no delete, the same token, a record that
    names the new thread.  The handover needs the connection that stored the lock;
    if the waiter's own poll is using it at that instant, the lock is released as
    usual -- so the handover must happen in at least one of three rounds."""
    assert any(_handover_round(memcached, "handover-%d" % n) for n in range(3))


def _turns_process(address: str, kind: str, lock_dir: str, key: str, seconds: float, threads: int, out) -> None:
    os.environ["MEMCACHEDLOCK_SERVERS"] = address
    os.environ["MEMCACHEDLOCK_BACKEND"] = kind
    os.environ["MEMCACHEDLOCK_DIR"] = lock_dir
    registry.reset()
    counts = [0] * threads
    stop_at = time.monotonic() + seconds

    def worker(number: int) -> None:
        lock = Lock(key)
        while time.monotonic() < stop_at:
            if lock.acquire(timeout=5):
                counts[number] += 1
                time.sleep(0.002)
                lock.release()

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(sum(counts))


@pytest.mark.needs("waiter_board")  # turns between processes come from announcements
def test_handovers_inside_a_process_do_not_starve_another_process(store, memcached, lock_dir):
    """Threads of one process hand the lock to each other; another process with
    waiting threads must still get a fair share of turns."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    args = (memcached.address, store, str(lock_dir), "fair-share", 2.0, 3, out)
    processes = [context.Process(target=_turns_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    shares = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sum(shares) > 100
    assert min(shares) >= 0.3 * sum(shares), shares
