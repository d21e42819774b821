"""The threading.Lock / threading.RLock protocol, on every lock store."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
from zope.interface.verify import verifyObject

from unimr.memcachedlock import Lock, NotHeld, RLock, lock_getter, registry, rlock_getter
from unimr.memcachedlock.errors import InvalidArgument, MemcachedLockError, TimeoutTooLarge
from unimr.memcachedlock.interfaces import ILock

pytestmark = pytest.mark.usefixtures("store")

KINDS = [Lock, RLock]


@pytest.mark.parametrize("kind", KINDS)
def test_acquire_release_and_locked(kind):
    lock = kind("protocol")
    assert lock.locked() is False
    assert lock.acquire() is True
    assert lock.locked() is True
    assert kind("protocol").locked() is True, "another object sees the lock held"
    lock.release()
    assert lock.locked() is False


@pytest.mark.parametrize("kind", KINDS)
def test_verify_interface(kind):
    assert verifyObject(ILock, kind("iface"))


@pytest.mark.parametrize("kind", KINDS)
def test_context_manager(kind):
    lock = kind("ctx")
    with lock as entered:
        assert entered is lock
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.parametrize("kind", KINDS)
def test_context_manager_releases_on_exception(kind):
    lock = kind("ctx-exc")
    with pytest.raises(KeyError), lock:
        raise KeyError("boom")
    assert not lock.locked()


def _attempts(monkeypatch) -> list:
    """The acquisitions the store is asked for from now on (a wait polls it again and again)."""
    backend = registry.get_backend()
    asked: list = []
    acquire = backend.acquire

    def counted(*args, **kw):
        asked.append(args)
        return acquire(*args, **kw)

    monkeypatch.setattr(backend, "acquire", counted)
    return asked


@pytest.mark.parametrize("kind", KINDS)
def test_non_blocking_fails_while_other_object_holds(kind, monkeypatch):
    holder = kind("nb")
    assert holder.acquire()
    other = kind("nb")
    asked = _attempts(monkeypatch)
    started = time.monotonic()
    assert other.acquire(blocking=False) is False
    assert other.acquire(False) is False
    # no wait: one request each, and back long before a wait would end (never: the holder keeps the lock);
    # the bound is for a loaded machine, a hundred times two requests
    assert len(asked) == 2
    assert time.monotonic() - started < 2
    holder.release()
    assert other.acquire(blocking=False) is True
    other.release()


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_waits_about_that_long(kind, monkeypatch):
    holder = kind("to")
    holder.acquire()
    other = kind("to")
    started = time.monotonic()
    assert other.acquire(timeout=0.3) is False
    waited = time.monotonic() - started
    # ends at its timeout, not at a release (none comes): ten times the timeout leaves a loaded machine room
    assert 0.25 <= waited < 3
    asked = _attempts(monkeypatch)
    started = time.monotonic()
    assert other.acquire(timeout=0) is False
    assert len(asked) == 1 and time.monotonic() - started < 2  # no wait, as with blocking=False
    holder.release()


@pytest.mark.parametrize("kind", KINDS)
def test_blocking_acquire_returns_when_released_by_other_thread(kind):
    holder = kind("handover")
    holder.acquire()
    got = []

    def waiter():
        other = kind("handover")
        got.append(other.acquire(timeout=10))
        other.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    assert got == []
    holder.release()
    thread.join(10)
    assert got == [True]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(blocking=False, timeout=1), ValueError),
        (dict(timeout=-2), ValueError),
        (dict(timeout=-0.5), ValueError),
        (dict(timeout=float("nan")), ValueError),
        (dict(timeout=threading.TIMEOUT_MAX * 2), OverflowError),
        (dict(timeout="1"), TypeError),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_acquire_argument_rules_match_threading(kind, kwargs, error):
    with pytest.raises(error):
        threading.Lock().acquire(**kwargs)
    lock = kind("args")
    with pytest.raises(error) as info:
        lock.acquire(**kwargs)
    if error is not TypeError:
        assert isinstance(info.value, MemcachedLockError)
    assert not lock.locked()


def test_error_classes():
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(TimeoutTooLarge, OverflowError)
    assert issubclass(NotHeld, RuntimeError)


@pytest.mark.parametrize("kind", KINDS)
def test_release_unheld_raises_runtime_error(kind):
    lock = kind("unheld")
    with pytest.raises(RuntimeError):
        lock.release()
    lock.acquire()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_release_of_lock_held_by_another_object_raises_and_keeps_it():
    holder = Lock("foreign")
    holder.acquire()
    with pytest.raises(RuntimeError):
        Lock("foreign").release()
    assert Lock("foreign").locked()
    holder.release()


def test_lock_is_not_reentrant():
    lock = Lock("not-reentrant")
    assert lock.acquire()
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.1) is False
    lock.release()


def test_lock_may_be_released_by_another_thread():
    lock = Lock("any-thread")
    lock.acquire()
    errors = []

    def release():
        try:
            lock.release()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    thread.join()
    assert errors == []
    assert not lock.locked()


def test_rlock_is_reentrant_in_its_thread():
    lock = RLock("reentrant")
    assert lock.acquire()
    assert lock.acquire()
    assert lock.acquire(blocking=False)
    assert "count=3" in repr(lock)
    lock.release()
    lock.release()
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_rlock_belongs_to_its_thread():
    lock = RLock("owned")
    lock.acquire()
    results = []

    def other():
        results.append(lock.acquire(blocking=False))
        try:
            lock.release()
        except RuntimeError:
            results.append("refused")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert results == [False, "refused"]
    lock.release()


@pytest.mark.parametrize("kind", KINDS)
def test_repr_shows_state_like_threading(kind):
    lock = kind("repr")
    assert repr(lock).startswith("<unlocked ")
    assert "repr" in repr(lock)
    lock.acquire()
    assert repr(lock).startswith("<locked ")
    lock.release()
    assert repr(lock).startswith("<unlocked ")


def test_rlock_repr_shows_owner_and_count():
    lock = RLock("rrepr")
    assert "owner=0 count=0" in repr(lock)
    lock.acquire()
    assert "owner=%d count=1" % threading.get_ident() in repr(lock)
    lock.release()


@pytest.mark.parametrize("kind", KINDS)
def test_unreferenced_lock_is_collected_and_released(kind):
    lock = kind("collected")
    lock.acquire()
    ref = weakref.ref(lock)
    del lock
    gc.collect()
    assert ref() is None
    # the reaper thread releases it (a finalizer must not do the network work itself)
    deadline = time.monotonic() + 3
    while kind("collected").locked():
        assert time.monotonic() < deadline, "a collected holder releases its lock"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_unheld_lock_objects_do_not_accumulate(kind):
    refs = []
    for number in range(50):
        lock = kind("many-%d" % number)
        lock.acquire()
        lock.release()
        refs.append(weakref.ref(lock))
        del lock
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_factories_of_the_2009_api():
    lock = lock_getter("factory", 10, 0.01)
    assert isinstance(lock, Lock)
    assert (lock.timeout, lock.interval) == (10, 0.01)
    rlock = rlock_getter("factory-r", timeout=5)
    assert isinstance(rlock, RLock)
    with pytest.warns(DeprecationWarning):
        old = lock_getter("old", 30, intervall=0.2)
    assert old.interval == 0.2


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1e12, "30", None, True])
def test_bad_lease_is_refused_naming_the_value(bad):
    with pytest.raises(InvalidArgument) as info:
        Lock("bad-lease", timeout=bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), 1e9, "0.05"])
def test_bad_interval_is_refused_naming_the_value(bad):
    with pytest.raises(InvalidArgument) as info:
        Lock("bad-interval", interval=bad)
    assert repr(bad) in str(info.value)


def test_threading_condition_works_with_rlock():
    lock = RLock("condition")
    condition = threading.Condition(lock)
    with condition:
        assert condition.wait(0.05) is False
        assert lock.locked()
    assert not lock.locked()
