"""The file lock store (flock): real files, real threads, real processes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from unimr.memcachedlock import config, registry
from unimr.memcachedlock.backends.file import FileBackend, FileLease
from unimr.memcachedlock.errors import ConfigurationError, NotHeld
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.locks import Lock, RLock

HOLDER = r"""
import sys, time
from unimr.memcachedlock.locks import Lock
lock = Lock(sys.argv[1], timeout=float(sys.argv[2]))
assert lock.acquire(timeout=10)
print(type(lock.lease).__name__, flush=True)
time.sleep(120)
"""


def start_holder(key: str, ttl: float = 30.0, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real process that takes ``key`` and holds it until killed; returns it and its lease type."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, key, str(ttl)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        raise AssertionError("holder did not start: %s" % proc.stderr.read().decode())
    return proc, line


def holder_env(lock_dir) -> dict:
    return {"MEMCACHEDLOCK_BACKEND": "file", "MEMCACHEDLOCK_DIR": str(lock_dir)}


@pytest.fixture
def file_store(lock_dir, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    registry.reset()
    backend = registry.get_backend()
    assert isinstance(backend, FileBackend)
    return backend


def test_directory_is_created_private(file_store, lock_dir):
    assert lock_dir.is_dir()
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700


def test_threads_of_one_process_exclude_each_other(file_store):
    inside = []
    overlaps = []
    counter = [0]

    def work():
        for _ in range(200):
            with Lock("shared-key", interval=0.005):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                value = counter[0]
                time.sleep(0)
                counter[0] = value + 1
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not overlaps
    assert counter[0] == 1200
    assert os.listdir(file_store.directory) == []


def test_second_acquisition_in_same_thread_is_refused(file_store):
    first = file_store.acquire("k", 5)
    assert isinstance(first, FileLease)
    assert file_store.acquire("k", 5) is None
    assert first.release() is True
    second = file_store.acquire("k", 5)
    assert second is not None
    second.release()


def test_other_process_is_excluded_and_crash_frees_at_once(file_store, lock_dir):
    proc, kind = start_holder("crash-key", env=holder_env(lock_dir))
    try:
        assert kind == "FileLease"
        lock = Lock("crash-key")
        assert not lock.acquire(blocking=False)
        holder = file_store.holder(lock_name("crash-key"))
        assert holder is not None and holder.pid == proc.pid and holder.backend == "file"
        assert 25 < holder.ttl_left <= 30.01
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: the kernel dropped the dead holder's flock as it exited
        assert lock.acquire(blocking=False), "free at once, not when the 30 s lease runs out"
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_stale_file_of_crashed_holder_is_cleaned(file_store, lock_dir):
    proc, _ = start_holder("stale", env=holder_env(lock_dir))
    proc.kill()
    proc.wait()
    name = lock_name("stale")
    assert os.path.exists(file_store.path_for(name))
    assert file_store.holder(name) is None
    assert file_store.may_be_available(name)
    assert file_store.list_locks() == []
    assert not os.path.exists(file_store.path_for(name))


def test_holder_inspection_and_list(file_store):
    lock = Lock("catalog /plone/portal_catalog", timeout=7)
    lock.acquire()
    try:
        holder = file_store.holder(lock.name)
        assert holder.pid == os.getpid()
        assert holder.thread == threading.get_ident()
        assert holder.token == lock.lease.token
        assert holder.age < 2 and 5 < holder.ttl_left <= 7.01
        assert [h.name for h in file_store.list_locks()] == [lock.name]
        assert lock.locked()
        assert not file_store.may_be_available(lock.name)
    finally:
        lock.release()
    assert file_store.holder(lock.name) is None
    assert not lock.locked()


def test_break_lock_and_late_release_keeps_new_holder(file_store):
    old = Lock("broken")
    old.acquire()
    assert file_store.break_lock(old.name) is True
    new = Lock("broken")
    assert new.acquire(blocking=False)
    old_lease = old.lease
    old.release()
    assert old_lease.lost
    assert file_store.holder(new.name).token == new.lease.token
    assert not Lock("broken").acquire(blocking=False)
    new.release()
    assert file_store.break_lock(new.name) is False


def test_renewal_rewrites_expiry(file_store):
    lease = file_store.acquire("renew-me", 3)
    try:
        before = file_store.holder("renew-me").expires
        time.sleep(0.05)
        assert lease.renew(10)
        after = file_store.holder("renew-me")
        assert after.expires > before + 6
        assert after.token == lease.token
    finally:
        lease.release()


def test_renewal_of_broken_lock_reports_lost(file_store):
    seen = []
    lock = Lock("renew-broken", on_lost=seen.append)
    lock.acquire()
    file_store.break_lock(lock.name)
    assert lock.lease.renew() is False
    assert lock.lost and seen == [lock.lease]
    lock.release()


def test_release_all(file_store):
    leases = [file_store.acquire("all-%d" % i, 5) for i in range(3)]
    assert all(leases)
    assert file_store.release_all() == 3
    assert all(lease.released for lease in leases)
    assert file_store.list_locks() == []


def test_notes_roundtrip_and_are_atomic(file_store):
    assert file_store.get_note("n") is None
    file_store.set_note("n", b"tid-1")
    assert file_store.get_note("n") == b"tid-1"
    file_store.set_note("n", b"tid-2" * 100)
    assert file_store.get_note("n") == b"tid-2" * 100
    assert not [f for f in os.listdir(file_store.directory) if f.endswith(".tmp")]
    file_store.remove_note("n")
    assert file_store.get_note("n") is None


def test_rlock_on_file_store(file_store):
    lock = RLock("re")
    with lock, lock:
        assert file_store.holder(lock.name) is not None
    assert file_store.holder(lock.name) is None
    with pytest.raises(NotHeld):
        lock.release()


def test_directory_removed_while_running_is_recreated(file_store):
    os.rmdir(file_store.directory)
    lease = file_store.acquire("again", 5)
    assert lease is not None
    lease.release()


def test_lock_dir_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "plain-file"
    path.write_text("x")
    with pytest.raises(ConfigurationError, match="plain-file"):
        FileBackend(str(path))
    with pytest.raises(ConfigurationError, match="cannot create lock directory"):
        FileBackend(str(path / "sub"))


UNWRITABLE = r"""
import os, sys
from unimr.memcachedlock import config
from unimr.memcachedlock.backends import file, fallback, memcached
from unimr.memcachedlock.errors import ConfigurationError
from unimr.memcachedlock.locks import Lock
os.setgid(65534); os.setuid(65534)
try:
    Lock("k").acquire()
except ConfigurationError as exc:
    print("ConfigurationError:", exc)
"""


def test_unwritable_lock_dir_names_it():
    """As an unprivileged user (root may write anywhere) the error names the directory."""
    import pathlib
    import shutil
    import tempfile

    base = pathlib.Path(tempfile.mkdtemp(prefix="mcl-unwritable-"))
    os.chmod(base, 0o755)
    locked = base / "readonly"
    locked.mkdir(mode=0o500)
    os.chown(locked, 65534, 65534)
    try:
        _run_unwritable(locked)
    finally:
        shutil.rmtree(base)


def _run_unwritable(locked) -> None:
    env = dict(os.environ, MEMCACHEDLOCK_BACKEND="file", MEMCACHEDLOCK_DIR=str(locked))
    result = subprocess.run([sys.executable, "-c", UNWRITABLE], env=env, capture_output=True, timeout=60)
    out = result.stdout.decode()
    assert "ConfigurationError:" in out, result.stderr.decode()
    assert str(locked) in out and "not writable" in out


def test_stores_provide_the_backend_interface(file_store, lock_dir):
    from zope.interface.verify import verifyObject

    from unimr.memcachedlock.backends.fallback import FallbackBackend
    from unimr.memcachedlock.backends.memcached import MemcachedBackend
    from unimr.memcachedlock.interfaces import ILease, ILockBackend

    fallback = FallbackBackend(MemcachedBackend(config.parse_servers("127.0.0.1:1")), file_store)
    for store in (file_store, fallback):
        assert verifyObject(ILockBackend, store)
    lease = file_store.acquire("iface", 5)
    assert verifyObject(ILease, lease)
    lease.release()
    fallback.close()


TRY_HOLD = r"""
import sys
from unimr.memcachedlock.locks import Lock
lock = Lock("two-working-directories")
try:
    held = lock.acquire(blocking=False)
except Exception as exc:
    print("%s: %s" % (type(exc).__name__, exc), flush=True)
    sys.exit(2)
print("held" if held else "refused", flush=True)
sys.stdin.readline()
"""


def try_to_hold(cwd, lock_dir: str) -> subprocess.Popen:
    """A process in ``cwd`` on the file store at ``lock_dir`` that tries the key once and says what happened."""
    env = dict(os.environ, MEMCACHEDLOCK_BACKEND="file", MEMCACHEDLOCK_DIR=lock_dir)
    return subprocess.Popen([sys.executable, "-c", TRY_HOLD], cwd=str(cwd), env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def both_try(tmp_path, lock_dir: str) -> list[tuple[str, int]]:
    """Two processes in different working directories try the same key, the second while the first holds it.

    Returns what each said and its exit code; both hold the key until told to exit.
    """
    procs = []
    said = []
    try:
        for name in ("a", "b"):
            cwd = tmp_path / name
            cwd.mkdir()
            proc = try_to_hold(cwd, lock_dir)
            procs.append(proc)
            said.append(proc.stdout.readline().strip())
        for proc in procs:
            proc.communicate("exit\n", timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(line, proc.returncode) for line, proc in zip(said, procs, strict=True)]


@pytest.mark.parametrize("relative", ["locks", " ", "./locks"])
def test_a_relative_lock_dir_is_refused_in_every_working_directory(tmp_path, relative):
    """A relative ``locks`` was resolved in each process's own directory, and both held the key."""
    outcome = both_try(tmp_path, relative)
    assert [line for line, _ in outcome].count("held") <= 1, outcome
    if relative.strip():
        for line, code in outcome:
            assert code != 0 and line.startswith("ConfigurationError"), outcome
            assert "MEMCACHEDLOCK_DIR=%r" % relative in line, outcome
        assert not (tmp_path / "a" / "locks").exists() and not (tmp_path / "b" / "locks").exists()
    else:  # blank: not set, so both use the default directory and exclude each other
        assert outcome == [("held", 0), ("refused", 0)], outcome


def test_an_absolute_lock_dir_excludes_across_working_directories(tmp_path):
    outcome = both_try(tmp_path, str(tmp_path / "locks"))
    assert outcome == [("held", 0), ("refused", 0)], outcome
