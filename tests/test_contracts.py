"""Every interface of ``interfaces.py`` verified against every store that provides it, on real servers.

``zope.interface.verify.verifyObject`` checks that an object declares the
interface and has each attribute and method it names, with compatible
signatures: the memcached, file and fallback stores (the ``store``
fixture), their leases, waiter boards, commit gates and commit passes, and
the lock objects over each store.  Each store's ``capabilities`` is checked
against what it offers.
"""

from __future__ import annotations

from zope.interface.interfaces import IInterface
from zope.interface.verify import verifyObject

from unimr.memcachedlock import interfaces, registry
from unimr.memcachedlock.backends.base import CAPABILITIES
from unimr.memcachedlock.interfaces import ICommitGate, ICommitPass, ILease, ILock, ILockBackend, IWaiterBoard
from unimr.memcachedlock.locks import Lock, RLock

NAME = "contract-test"

#: What each store can do where the stores differ (``ILockBackend.capabilities``).
EXPECTED_CAPABILITIES = {
    "memcached": {"commit_gate", "notes", "waiter_board", "note_with_acquire", "note_with_release",
                  "expiring_leases", "multi_host"},
    "file": {"commit_gate", "notes", "waiter_board", "note_with_release"},
    "fallback": {"commit_gate", "notes", "waiter_board", "note_with_acquire", "note_with_release",
                 "expiring_leases", "multi_host", "outage_fallback"},
}


def test_every_interface_is_verified_here():
    """A new interface in interfaces.py needs its verification below."""
    declared = {value for value in vars(interfaces).values()
                if IInterface.providedBy(value) and value.__module__ == interfaces.__name__}
    assert declared == {ILock, ILease, IWaiterBoard, ICommitPass, ICommitGate, ILockBackend}


def test_the_store_provides_ilockbackend(store):
    backend = registry.get_backend()
    assert verifyObject(ILockBackend, backend)
    assert backend.kind == store


def test_the_capabilities_are_declared_and_true(store):
    backend = registry.get_backend()
    assert isinstance(backend.capabilities, frozenset)
    assert backend.capabilities <= set(CAPABILITIES)
    assert backend.capabilities == EXPECTED_CAPABILITIES[store]
    assert ("waiter_board" in backend.capabilities) == (backend.waiter_board is not None)
    assert ("commit_gate" in backend.capabilities) == (backend.commit_gate is not None)


def test_a_lease_provides_ilease(store):
    backend = registry.get_backend()
    lease = backend.acquire(NAME, 10)
    assert lease is not None
    try:
        assert verifyObject(ILease, lease)
        assert lease.backend in (backend, getattr(backend, "primary", None))
        assert lease.held and not lease.released and not lease.lost
    finally:
        assert lease.release()
    assert lease.released and not lease.held


def test_the_waiter_board_provides_iwaiterboard(store):
    backend = registry.get_backend()
    board = backend.waiter_board
    if "waiter_board" not in backend.capabilities:
        assert board is None
        return
    assert verifyObject(IWaiterBoard, board)
    held, want, cas = board.peek_want(NAME)
    assert (held, want, cas) == (False, None, None)


def test_the_commit_gate_and_its_pass_provide_their_interfaces(store):
    backend = registry.get_backend()
    gate = backend.commit_gate
    assert verifyObject(ICommitGate, gate)
    entered = gate.enter(NAME)
    assert entered is not None
    try:
        assert verifyObject(ICommitPass, entered)
    finally:
        entered.leave()
    assert gate.passing(NAME) == 0


def test_the_lock_objects_provide_ilock(store):
    for lock in (Lock(NAME), RLock(NAME)):
        assert verifyObject(ILock, lock)
        with lock:
            assert lock.locked()
        assert not lock.locked()
