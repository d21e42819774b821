"""Fork while holding: the child does not hold its parent's locks, and the
parent's locks survive the child's exit (every store)."""

from __future__ import annotations

import os
import time

import pytest

from unimr.memcachedlock.errors import NotHeld
from unimr.memcachedlock.lease import live_leases
from unimr.memcachedlock.locks import Lock, RLock


def in_child(check) -> int:
    """Run ``check`` in a forked child; return its exit status (0 = every assertion held)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            check()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("factory", [Lock, RLock])
def test_child_does_not_hold_parents_lock(store, factory):
    lock = factory("forked", timeout=2)
    lock.acquire()
    token = lock.lease.token

    def child():
        assert lock.lease is None
        assert live_leases() == []
        assert lock.locked()  # somebody (the parent) holds it
        try:
            lock.release()
        except NotHeld:
            pass
        else:
            raise AssertionError("child released its parent's lock")
        assert not factory("forked").acquire(blocking=False)

    assert in_child(child) == 0
    # the child has exited (closing its descriptors): the parent still holds the lock
    assert lock.lease is not None and not lock.lost
    assert lock.backend.holder(lock.name).token == token
    assert not Lock("forked").acquire(blocking=False)
    time.sleep(1.2)  # a renewal period: the parent's renewer keeps working after the fork
    assert not lock.lost
    lock.release()
    assert Lock("forked").acquire(blocking=False)


def test_child_can_take_its_own_locks(store):
    parent_lock = Lock("parent-only")
    parent_lock.acquire()

    def child():
        other = Lock("child-own", timeout=2)
        assert other.acquire(timeout=2)
        assert other.lease.pid == os.getpid()
        other.release()
        assert not Lock("parent-only").acquire(blocking=False)

    assert in_child(child) == 0
    assert parent_lock.backend.holder(parent_lock.name) is not None
    parent_lock.release()
