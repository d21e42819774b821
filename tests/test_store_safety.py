"""Safety of the lock stores: exclusion, tokens, expiry, restarts, hostile keys.

Like the lock protocol tests, a property that every store promises runs over
the three stores (the ``store`` fixture: memcached, file, fallback):
interfaces, exclusion between threads and between processes, one winner of
concurrent acquires, a late release or renewal that leaves a new holder
alone, and hostile keys.

A lease that runs out while its holder lives is a property of memcached's
TTL, so that test runs on memcached and on the fallback store (whose
primary is memcached); a file lock ends only with its holder's process.

memcached only, because they test memcached itself or its client: a server
restart (lost locks, the cas counter starting again), the one-round-trip
release on the acquiring connection (cas), pymemcache's noreply and timeouts,
one client per process, and the rendezvous hash over several servers.  The
key-name tests use no store at all.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import pytest
from zope.interface.verify import verifyObject

from unimr.memcachedlock import Lock, RLock, get_backend, registry
from unimr.memcachedlock.backends.memcached import MemcachedBackend
from unimr.memcachedlock.config import parse_servers
from unimr.memcachedlock.interfaces import ILease, ILockBackend
from unimr.memcachedlock.keys import MAX_NAME_LENGTH, lock_name

from overlap import OverlapLog


def _raw(server, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(command)
        time.sleep(0.05)
        return sock.recv(65536)


def test_backend_and_lease_provide_their_interfaces(store):
    backend = get_backend()
    assert backend.kind == store
    assert verifyObject(ILockBackend, backend)
    lease = backend.acquire("iface", 5)
    assert verifyObject(ILease, lease)
    assert lease.release() is True


def _hammer(kind, key: str, log_path: str, rounds: int, who: str) -> None:
    log = OverlapLog(log_path)
    lock = kind(key, timeout=10, interval=0.005)
    for _ in range(rounds):
        assert lock.acquire(timeout=30)
        log.enter(key, who)
        time.sleep(0.001)
        log.exit(key, who)
        lock.release()


@pytest.mark.parametrize("kind", [Lock, RLock])
def test_threads_of_one_process_exclude_each_other(store, tmp_path, kind):
    log_path = str(tmp_path / "log")
    threads = [
        threading.Thread(target=_hammer, args=(kind, "threads", log_path, 25, "t%d" % n))
        for n in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    log = OverlapLog(log_path)
    assert log.count() == 150
    assert log.violations() == []


def _process_main(settings: dict, log_path: str, rounds: int, who: str) -> None:
    os.environ.update(settings)
    registry.reset()
    threads = [
        threading.Thread(target=_hammer, args=(Lock, "procs", log_path, rounds, "%s-%d" % (who, n)))
        for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_processes_and_their_threads_exclude_each_other(store, tmp_path):
    log_path = str(tmp_path / "log")
    settings = {name: value for name, value in os.environ.items() if name.startswith("MEMCACHEDLOCK_")}
    assert settings["MEMCACHEDLOCK_BACKEND"] == store
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_process_main, args=(settings, log_path, 15, "p%d" % n))
        for n in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    log = OverlapLog(log_path)
    assert log.count() == 3 * 3 * 15
    assert log.violations() == []


def test_atomic_acquisition_exactly_one_winner(store):
    backend = get_backend()
    barrier = threading.Barrier(8)
    winners = []

    def contend():
        barrier.wait()
        lease = backend.acquire("race", 10)
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    winners[0].release()


def test_late_release_after_expiry_leaves_new_holder_alone(store):
    first = Lock("late", timeout=2)
    assert first.acquire()
    lease = first.lease
    backend = get_backend()
    # The lease runs out (as memcached would expire it) and somebody else takes the lock.
    assert backend.break_lock(first.name)
    second = Lock("late", timeout=30)
    assert second.acquire(timeout=5)
    first.release()
    assert lease.lost is True
    assert first.lost is True, "the caller learns after release that its lock was lost"
    holder = backend.holder(second.name)
    assert holder is not None and holder.token == second.lease.token
    second.release()
    assert first.acquire(timeout=5) and first.lost is False
    first.release()


@pytest.mark.parametrize("store", ["memcached", "fallback"], indirect=True)
def test_lease_really_expires_in_memcached_when_not_renewed(store):
    backend = get_backend()
    lease = backend.acquire("expire", 2)
    lease.pid = -1  # the renewer only renews leases of this process: simulate a frozen holder
    started = time.monotonic()
    other = None
    while other is None and time.monotonic() - started < 5:
        other = backend.acquire("expire", 30)
        time.sleep(0.05)
    assert other is not None
    # memcached keeps a 2 s item at most 3 s (its clock ticks once a second); 1 s more for the polls of a loaded
    # machine.  A renewed lease would not run out in the loop's 5 s at all.
    assert time.monotonic() - started <= 4
    lease.pid = os.getpid()
    assert lease.release() is False
    assert backend.holder("expire").token == other.token
    other.release()


def test_expired_lease_is_not_renewed_over_a_new_holder(store):
    backend = get_backend()
    lease = backend.acquire("renew-late", 30)
    backend.break_lock("renew-late")
    other = backend.acquire("renew-late", 30)
    assert other is not None
    assert lease.renew() is False
    assert lease.lost is True
    assert backend.holder("renew-late").token == other.token
    assert other.release() is True


def test_restart_while_held_and_cas_reuse(private_memcached):
    """After a restart the cas counter starts again: an old holder may meet its own cas
    on a new holder's item.  Release compares the token, so it must not delete it."""
    backend = get_backend()
    old = backend.acquire("restart", 30)
    assert old is not None
    old_value, old_cas = old.server.client.gets(old.key)
    private_memcached.restart()
    time.sleep(0.1)
    new = None
    deadline = time.monotonic() + 5
    while new is None and time.monotonic() < deadline:
        try:
            new = backend.acquire("restart", 30)
        except Exception:
            time.sleep(0.2)
    assert new is not None, "the lock was lost with the restart: a new holder can take it"
    new_value, new_cas = new.server.client.gets(new.key)
    assert new_value != old_value
    # Whatever the cas values, the old holder's release must leave the new lock alone.
    assert old.release() is False
    assert backend.holder("restart").token == new.token
    assert new.release() is True


def test_same_cas_after_restart_never_releases_the_new_holder(private_memcached):
    """FACTS: a restart resets the cas counter.  Force the new holder's item onto
    the very cas the old holder remembers; the old release must still leave it."""
    backend = get_backend()
    old = backend.acquire("same-cas", 30)
    assert old is not None and old.cas is not None
    private_memcached.restart()
    filler = MemcachedBackend(parse_servers(private_memcached.address))
    new = None
    for _ in range(200):
        candidate = filler.acquire("same-cas", 30)
        if candidate is not None and candidate.cas == old.cas:
            new = candidate
            break
        if candidate is not None:
            candidate.release()
        if candidate is not None and int(candidate.cas) > int(old.cas):
            break
    assert new is not None, "could not reproduce a reused cas (old cas %s)" % old.cas
    assert old.release() is False
    holder = backend.holder("same-cas")
    assert holder is not None and holder.token == new.token
    assert new.release() is True


def test_release_is_one_round_trip_only_on_the_acquiring_connection(memcached):
    backend = get_backend()
    lease = backend.acquire("other-connection", 30)
    # Another thread takes the idle connection: the release must not trust the cas.
    pool = lease.server.client
    borrowed = pool._idle.pop()
    try:
        before = memcached.stats()
        assert lease.release() is True
        after = memcached.stats()
    finally:
        pool._idle.append(borrowed)
    assert int(after["cas_hits"]) == int(before["cas_hits"]) + 1, "fell back to gets + cas"


HOSTILE = [
    "with space",
    "cr\r\nlf",
    "nul\x00byte",
    "x" * 5000,
    "ümlaut/路径/😀",
    b"\xff\xfe raw bytes \r\n",
    "get foo\r\nset bar 0 0 1",
    "",
    "%41",
    "A",
    12345,
]


@pytest.mark.parametrize("key", HOSTILE, ids=lambda k: repr(k)[:20])
def test_hostile_keys_never_reach_the_wire_raw(store, memcached, key):
    name = lock_name(key)
    assert name.isascii() and len(name) <= MAX_NAME_LENGTH
    assert not any(c.isspace() or ord(c) < 33 or c == "/" for c in name)
    lock = Lock(key)
    assert lock.acquire(timeout=2)
    assert Lock(key).locked()
    assert lock.release() is None
    assert not Lock(key).locked()
    if store != "file":  # the key went to memcached: the server still parses commands
        stats = memcached.stats()
        assert int(stats.get("curr_connections", "1")) >= 1
        assert _raw(memcached, b"version\r\n").startswith(b"VERSION")


def test_distinct_keys_get_distinct_names():
    keys = ["a b", "a%20b", "a+b", "x" * 5000, "x" * 4999 + "y", "%", "%25", b"\xff", "\xff"]
    names = [lock_name(k) for k in keys]
    assert len(set(names)) == len(names)
    assert lock_name("same") == lock_name(b"same")
    assert lock_name(7) == lock_name("7")


def test_readable_keys_stay_readable():
    assert lock_name("Plone/portal_catalog") == "Plone%2Fportal_catalog"
    assert lock_name("mod.fun:key-1") == "mod.fun:key-1"


def test_non_string_key_is_refused_naming_the_type():
    from unimr.memcachedlock import InvalidKey

    for bad in (None, 1.5, ("a",), object(), True):
        with pytest.raises(InvalidKey) as info:
            Lock(bad)
        assert type(bad).__name__ in str(info.value)
        assert isinstance(info.value, TypeError)


def test_noreply_is_off_and_timeouts_are_set(memcached):
    backend = get_backend()
    client = backend.servers[0].client
    assert client.default_noreply is False
    assert client.connect_timeout and client.timeout
    # add reports False for an existing key only when noreply is off
    first = backend.acquire("noreply", 5)
    assert first is not None
    assert backend.acquire("noreply", 5) is None
    first.release()


def test_one_client_per_process_not_per_lock(memcached):
    backend = get_backend()
    Lock("warm-up").acquire(blocking=False)
    before = int(memcached.stats()["curr_connections"])
    locks = [Lock("clients-%d" % n) for n in range(20)]
    for lock in locks:
        lock.acquire()
    for lock in locks:
        lock.release()
    assert get_backend() is backend
    assert int(memcached.stats()["curr_connections"]) <= before + 1


def test_several_servers_map_keys_by_fixed_rendezvous_hash(memcached):
    servers = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    backend = MemcachedBackend(parse_servers(servers))
    again = MemcachedBackend(parse_servers("127.0.0.1:3,127.0.0.1:1,127.0.0.1:2"))
    names = ["key-%d" % n for n in range(300)]
    placement = [str(backend.server_for(n)) for n in names]
    assert placement == [str(again.server_for(n)) for n in names], "order of the list does not matter"
    counts = {s: placement.count(s) for s in set(placement)}
    assert len(counts) == 3 and min(counts.values()) > 50
    smaller = MemcachedBackend(parse_servers("127.0.0.1:1,127.0.0.1:2"))
    moved = [n for n, s in zip(names, placement, strict=True) if s != "127.0.0.1:3" and str(smaller.server_for(n)) != s]
    assert moved == [], "removing a server moves only that server's keys"
