"""Faults with real processes and real servers: killed, hung and restarted memcached,
crashed and frozen holders, memory pressure.  Decorated calls must keep running
within seconds and nothing may escape to the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from unimr.memcachedlock import config, registry
from unimr.memcachedlock.backends.file import FileLease
from unimr.memcachedlock.backends.memcached import MemcachedBackend, MemcachedLease
from unimr.memcachedlock.decorators import lock
from unimr.memcachedlock.errors import BackendUnavailable
from unimr.memcachedlock.locks import Lock

from servers import MemcachedServer

HOLDER = r"""
import sys, time
from unimr.memcachedlock.locks import Lock
lock = Lock(sys.argv[1], timeout=float(sys.argv[2]))
assert lock.acquire(timeout=10)
print(type(lock.lease).__name__, flush=True)
sys.stdin.readline()
lease = lock.lease
lock.release()
print("lost" if lease.lost else "released", flush=True)
"""


class Holder:
    """A real process holding a lock until told to release it (or killed)."""

    def __init__(self, key: str, ttl: float, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, key, str(ttl)],
                                     env=dict(os.environ, **env), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.kind = self.proc.stdout.readline().decode().strip()
        if not self.kind:
            self.proc.kill()
            raise AssertionError("holder failed: %s" % self.proc.stderr.read().decode())

    def release(self) -> str:
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def env_for(server: MemcachedServer, lock_dir, backend: str) -> dict[str, str]:
    return {
        "MEMCACHEDLOCK_SERVERS": server.address, "MEMCACHEDLOCK_BACKEND": backend,
        "MEMCACHEDLOCK_DIR": str(lock_dir), "MEMCACHEDLOCK_IO_TIMEOUT": "0.3",
        "MEMCACHEDLOCK_CONNECT_TIMEOUT": "0.3", "MEMCACHEDLOCK_RETRY": "0.5",
    }


@pytest.fixture
def fallback_env(private_memcached, lock_dir, monkeypatch):
    env = env_for(private_memcached, lock_dir, "fallback")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    registry.reset()
    return env


@pytest.fixture
def memcached_env(private_memcached, lock_dir, monkeypatch):
    env = env_for(private_memcached, lock_dir, "memcached")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    registry.reset()
    return env


def hammer(threads: int, calls: int, key: str = "hot") -> tuple[list, float]:
    """Decorated calls from several threads; returns the errors and the time taken."""
    errors: list = []
    inside = [0]

    @lock(lambda fun: key, timeout=5)
    def work():
        inside[0] += 1
        try:
            assert inside[0] == 1, "two callers inside"
            time.sleep(0.001)
        finally:
            inside[0] -= 1

    def run():
        for _ in range(calls):
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

    started = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    return errors, time.monotonic() - started


def test_dead_memcached_decorated_calls_keep_running(fallback_env, private_memcached):
    private_memcached.kill()
    errors, took = hammer(4, 25)
    assert errors == []
    assert took < 5


def test_hung_memcached_decorated_calls_keep_running(fallback_env, private_memcached):
    private_memcached.stop()
    try:
        errors, took = hammer(4, 25)
    finally:
        private_memcached.cont()
    assert errors == []
    assert took < 5


def test_memcached_killed_while_locks_held(fallback_env, private_memcached):
    held = Lock("held-at-crash")
    held.acquire()
    lease = held.lease
    assert isinstance(lease, MemcachedLease)
    private_memcached.kill()
    errors, took = hammer(2, 10, key="other")
    assert errors == [] and took < 5
    held.release()
    assert lease.released
    private_memcached.start()
    time.sleep(0.6)
    with Lock("held-at-crash", timeout=5) as again:
        assert isinstance(again.lease, MemcachedLease)


def test_memcached_only_reports_outage_as_connection_error(memcached_env, private_memcached):
    held = Lock("mc-only")
    held.acquire()
    private_memcached.kill()
    with pytest.raises(ConnectionError) as info:
        Lock("mc-only-2").acquire(timeout=0.2)
    assert isinstance(info.value, BackendUnavailable)
    assert private_memcached.address in str(info.value)
    held.release()  # never raises; the release is deferred until the server answers


def test_restart_late_release_keeps_new_holder(memcached_env, private_memcached):
    """After a restart the cas counter starts again: the old holder's release must
    compare its token, not a cas, and leave the new holder alone."""
    old = Lock("restarted")
    old.acquire()
    old_lease = old.lease
    private_memcached.restart()
    registry.reset()
    new = Lock("restarted")
    deadline = time.monotonic() + 5
    while not new.acquire(blocking=False):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    backend = new.backend
    assert old_lease.renew() is False and old_lease.lost
    old.release()
    assert backend.holder(new.name).token == new.lease.token
    assert not Lock("restarted").acquire(blocking=False)
    new.release()
    assert backend.holder(new.name) is None


def test_crashed_holder_frees_memcached_lock_within_ttl_plus_one(memcached_env, lock_dir, private_memcached):
    ttl = 2.0
    holder = Holder("crashed", ttl, memcached_env)
    try:
        assert holder.kind == "MemcachedLease"
        contender = Lock("crashed", timeout=ttl, interval=0.05)
        assert not contender.acquire(timeout=ttl + 0.5)  # the renewer keeps a live holder's lock
        holder.proc.kill()
        killed = time.monotonic()
        assert contender.acquire(timeout=ttl + 1)
        assert time.monotonic() - killed <= ttl + 1
        contender.release()
    finally:
        holder.close()


def test_crashed_holder_decorated_call_runs_within_seconds(fallback_env, private_memcached):
    ran = []

    @lock(lambda fun: "decorated-crash", timeout=2)
    def work():
        ran.append(time.monotonic())

    # the decorator prefixes the function's name: hold that exact key
    key = "%s.%s:decorated-crash" % (work.__module__, work.__qualname__)
    holder = Holder(key, 2.0, fallback_env)
    try:
        assert holder.kind == "MemcachedLease"
        result = []
        caller = threading.Thread(target=lambda: result.append(work()))
        caller.start()
        time.sleep(0.5)
        assert ran == []
        holder.proc.kill()
        killed = time.monotonic()
        caller.join(10)
        assert ran and ran[0] - killed <= 3.0
    finally:
        holder.close()


def test_crashed_file_holder_frees_at_once(fallback_env, private_memcached):
    private_memcached.kill()
    holder = Holder("file-crash", 30, fallback_env)
    try:
        assert holder.kind == "FileLease"
        contender = Lock("file-crash")
        assert not contender.acquire(timeout=0.2)
        holder.proc.kill()
        holder.proc.wait()  # reaped: the kernel dropped the dead holder's flock as it exited
        assert contender.acquire(blocking=False), "free at once, not when the 30 s lease runs out"
        assert isinstance(contender.lease, FileLease)
        contender.release()
    finally:
        holder.close()


def test_frozen_holder_lease_expires_and_late_release_is_harmless(memcached_env, private_memcached):
    """SIGSTOP a holder: its lease runs out, another takes the lock, the old holder
    wakes up, finds its lease lost and its release leaves the new holder's lock."""
    ttl = 2.0
    holder = Holder("frozen", ttl, memcached_env)
    try:
        holder.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        taker = Lock("frozen", timeout=30)
        assert taker.acquire(timeout=ttl + 1.5)
        assert time.monotonic() - stopped <= ttl + 1.5
        holder.proc.send_signal(signal.SIGCONT)
        assert holder.release() == "lost"
        backend = taker.backend
        assert backend.holder(taker.name).token == taker.lease.token
        taker.release()
    finally:
        holder.close()


@pytest.mark.parametrize("extra, survives", [((), False), (("-o", "temporary_ttl=3600"), True)])
def test_eviction_under_memory_pressure(extra, survives):
    """Default memcached evicts a live lock under memory pressure; ``-o temporary_ttl``
    (items whose TTL is at most N are never evicted) keeps it."""
    server = MemcachedServer(memory_mb=2, extra=extra).start()
    try:
        backend = MemcachedBackend(config.parse_servers(server.address), io_timeout=5)
        lease = backend.acquire("evict-me", 30)
        assert lease is not None
        server.fill()
        assert int(server.stats()["evictions"]) > 1000
        kept = backend.holder("evict-me")
        assert (kept is not None and kept.token == lease.token) is survives
        lease.release()
        backend.close()
    finally:
        server.kill()
