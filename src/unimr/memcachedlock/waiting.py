"""Waiting for a busy lock: one poller per process and key, fair turns, instant wake-ups.

Polling a shared store is what makes a distributed lock slow and unfair: a
waiter sleeping through its back-off misses the release, and the releaser,
which re-acquires at once, wins again.  This module fixes the three parts
of that problem:

* **One poller per process and key.**  Threads of a process that wait for
  the same lock queue up in FIFO order; only the head of the queue talks
  to the store, so 50 waiting threads cost what one does.  Polls start at
  ``FIRST_POLL`` and back off with jitter to the lock's ``interval``.
* **Local wake-ups.**  Each waiting process binds a unix datagram socket
  (Linux abstract namespace: nothing to clean up).  A thread that releases
  the lock wakes its own process's head through it, and a releaser on the
  same host wakes another process's head, so a handoff costs one datagram
  and one ``add`` instead of half a poll interval.
* **Turns between processes.**  The head announces its process in the store
  under ``<key>#want`` (short TTL, refreshed while waiting; the waiter that
  waited longest may take the slot over).  A release reads that record in
  the same round trip as the token check.  When another process waits, the
  releaser wakes it and *yields*: its own next acquisition of that key waits
  until the announced waiter has taken the lock, or until a short grace
  period runs out (the waiter may have died).  The lock itself never passes
  to a process that did not take it with ``add``, so a dead waiter can only
  delay a handoff by the grace period, never hold a lock.

All of this is advisory: the store's atomic ``add`` and the token-compared
release decide who holds the lock, so a lost datagram or a stale announcement
costs time, never safety.  Every wait here is bounded by the caller's deadline.

This module keeps the state of every key and runs the waits; the state of
one key and its transitions are ``keystate.KeyState``, the datagrams are
``wakeups``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

from .backends.base import Backend
from .backends.records import Want
from .errors import BackendUnavailable
from .keystate import ANNOUNCE_PERIOD, KeyState, Waiter
from .lease import Lease, abandon
from .wakeups import await_wake, send_wake

#: First pause between two polls of the head waiter (seconds).  Each poll
#: reads the lock and its announcement in one request.
FIRST_POLL = 0.001
#: Growth of the pause per poll, up to the lock's ``interval``.
BACKOFF = 1.5
#: How long a releaser leaves the lock to a waiter it woke on this host.
YIELD_LOCAL = 0.02
#: Upper bound of the yield to a waiter on another host (it polls; it announced its pause).
YIELD_REMOTE_MAX = 0.25
#: Pause while yielding, between two checks whether the announced waiter took the lock.
YIELD_POLL = 0.001
#: Above this many remembered keys, releases sweep out the idle ones.
SWEEP_AT = 64

# -- the states of this process's keys -------------------------------------------------

_states: dict[tuple[int, str], KeyState] = {}
_states_lock = threading.Lock()


def _key(backend: Backend, name: str) -> tuple[int, str]:
    return (id(backend), name)


def _state_for(backend: Backend, name: str) -> KeyState:
    """The key's state, made if there is none (caller holds ``_states_lock``)."""
    state = _states.get(_key(backend, name))
    if state is None:
        state = _states[_key(backend, name)] = KeyState()
    return state


def _forget_if_idle(backend: Backend, name: str, state: KeyState) -> None:
    """Drop the key's state if it is still ``state`` and idle (caller holds ``_states_lock``)."""
    if _states.get(_key(backend, name)) is state and state.idle(time.monotonic()):
        del _states[_key(backend, name)]


def must_queue(backend: Backend, name: str) -> bool:
    """True if an acquisition must not try the store first: others of this process
    queue for the key, or this process yields it to another process."""
    state = _states.get((id(backend), name))
    if state is None:
        return False
    if state.newcomers_queue():
        return True
    with _states_lock:
        _forget_if_idle(backend, name, state)
    return False


def released(backend: Backend, name: str, successor: bytes | None) -> None:
    """A thread of this process released ``name``: wake the next waiter, here or elsewhere.

    ``successor`` is the announcement the release found next to the lock.
    When it names another process, that process is woken (if it is on this
    host) and this process yields the key to it for a short while.
    """
    state = _states.get((id(backend), name))
    if state is not None:
        state.lock_freed()
    want = Want.decode(successor) if successor else None
    if want is not None and (state is None or not state.is_ours(want)):
        woke = want.local and send_wake(want.address)
        if want.local and not woke:
            grace = 0.0  # it announced a socket on this host that nobody reads: gone
        elif woke:
            grace = YIELD_LOCAL
        else:
            grace = min(YIELD_REMOTE_MAX, 2 * want.pause + 0.002)
        if grace > 0:
            with _states_lock:
                state = _state_for(backend, name)
                state.yields_to(want.token, grace)
                if len(_states) > SWEEP_AT:
                    _sweep()
    if state is not None:
        state.wake_queued_head()


def _sweep() -> None:
    """Forget keys nobody here waits for or yields any more (caller holds ``_states_lock``)."""
    now = time.monotonic()
    for key in [key for key, state in _states.items() if state.idle(now)]:
        del _states[key]


def hand_over(backend: Backend, name: str, lease: Lease) -> bool:
    """Give ``lease``, still held, to the next thread of this process queued for ``name``.

    The lock never becomes free: it changes threads inside the process that
    holds it.  The store's waiter board rewrites the lock's record for the
    receiving thread (only while it is still the very item, or file, this
    lease holds: in memcached in one round trip, proven as for the
    one-round-trip release) and reads the waiter announcement.  If another
    process is announced, this handover still happens but the next release
    frees the lock, so that process gets the following turn.  A store without
    a board hands nothing over.  Returns True if the lease was handed (or,
    its receiver gone, released).
    """
    state = _states.get(_key(backend, name))
    if state is None or not state.may_receive() or not lease.held:
        return False
    if state.pays_owed_turn():
        return False
    store = backend.waiter_board
    if store is None:
        return False
    head = state.head()
    if head is None:
        return False  # the last waiter left meanwhile
    try:
        want = store.hand_record_over(lease, head.thread, head.ttl)
    except BackendUnavailable:
        return False
    if want is False:
        return False
    state.handed_over_seeing(want)
    with _states_lock:
        receiver = _states.get(_key(backend, name)) is state and state.receive(lease)
    if not receiver:
        lease.release()
        return True
    state.wake_head()
    return True


def _take_handed(state: KeyState) -> Lease | None:
    with _states_lock:
        lease = state.take_handed()
    return lease


def wait_for(backend: Backend, name: str, try_acquire: Callable[[], Lease | None], deadline: float | None,
             interval: float, immediate: bool, ttl: float = 30.0) -> Lease | None:
    """Wait in this process's queue for ``name`` until ``deadline``; return what
    ``try_acquire`` returned when it succeeded, or None at the deadline.

    ``immediate`` says whether the head may try at once (False when the
    caller has just failed an attempt itself).

    The waiter joins the queue inside the ``try``, so an interrupt at any
    point takes it out again (see ``_leave``).  Should the interrupt hit the
    ``finally`` clause itself, the waiter's seat, dropped with this frame,
    has the reaper take it out.  A lease it was handed but did not return
    is released by the lease's own finalizer.
    """
    me = Waiter(ttl)
    seat = _Seat(backend, name, me)
    try:
        with _states_lock:
            state = _state_for(backend, name)
            seat.state = state
            if not state.queue_up(me):
                immediate = False
        while True:
            if state.is_head(me):
                return _lead(backend, name, state, try_acquire, deadline, interval, immediate)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            me.wait_woken(remaining)
            immediate = not state.acquired_by_head
    finally:
        seat.leave()


class _Seat:
    """A waiter's place in its queue, owned by the waiting frame: if the frame goes
    away without leaving (interrupted in its ``finally``), the reaper leaves for it."""

    __slots__ = ("backend", "name", "waiter", "state", "left")

    def __init__(self, backend: Backend, name: str, waiter: Waiter) -> None:
        self.backend = backend
        self.name = name
        self.waiter = waiter
        self.state: KeyState | None = None
        self.left = False

    def leave(self) -> None:
        if self.state is not None:
            _leave(self.backend, self.name, self.state, self.waiter)
        self.left = True

    _reap = leave

    def __del__(self) -> None:
        if not getattr(self, "left", True) and getattr(self, "state", None) is not None:
            abandon(self)


def _leave(backend: Backend, name: str, state: KeyState, me: Waiter) -> None:
    """Take ``me`` out of the queue, even if interrupted once on the way (each step
    is idempotent, so it is simply done again), and pass the interrupt on."""
    try:
        _leave_once(backend, name, state, me)
    except BaseException:
        _leave_once(backend, name, state, me)
        raise


def _leave_once(backend: Backend, name: str, state: KeyState, me: Waiter) -> None:
    """Take ``me`` out of the queue; promote the next thread; the last one withdraws."""
    with _states_lock:
        orphan, sock, announced = state.leave(me)
        _forget_if_idle(backend, name, state)
    if orphan is not None:
        orphan.release()  # handed over as the last waiter gave up: nobody takes it now
    if sock is not None:
        sock.close()
    if announced:
        state.withdraw(backend, name)


def _lead(backend: Backend, name: str, state: KeyState, try_acquire: Callable[[], Lease | None],
          deadline: float | None, interval: float, immediate: bool) -> Lease | None:
    """The head's loop: poll the store, announce this process, wait for wake-ups."""
    store = backend.waiter_board
    state.becomes_head()
    delay = FIRST_POLL
    direct = immediate
    while True:
        handed = _take_handed(state) if state.handed is not None else None
        if handed is not None:
            state.took_lock(backend, name)
            return handed
        now = time.monotonic()
        held = True
        want: Want | None = None
        want_cas: bytes | None = None
        check = store is not None and (not direct or bool(state.yield_until))
        if check and store is not None:
            try:
                held, want, want_cas = store.peek_want(name)
            except BackendUnavailable:
                check = False
        yielding = state.still_yielding(now, check, held, want)
        if not yielding and (direct or not check or not held):
            result = try_acquire()
            if result is not None:
                state.took_lock(backend, name)
                return result
        if store is not None and check and not yielding:
            state.announce(store, name, want, want_cas, delay, now)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        pause = YIELD_POLL if yielding else delay * (0.5 + random.random())
        if deadline is not None:
            pause = min(pause, deadline - now)
        direct = _sleep(state, pause)
        if not yielding:
            delay = min(interval, delay * BACKOFF)


def _sleep(state: KeyState, pause: float) -> bool:
    """Sleep ``pause`` seconds or until a wake-up arrives; True if woken (the lock was released)."""
    if pause <= 0:
        return False
    sock = state.sock
    if sock is None:
        me = state.head()
        if me is None:
            time.sleep(pause)
            return False
        return me.wait_woken(pause)
    return await_wake(sock, pause)


def _after_fork_in_child() -> None:
    global _states_lock
    _states_lock = threading.Lock()
    _states.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["must_queue", "released", "hand_over", "wait_for", "FIRST_POLL", "BACKOFF", "YIELD_LOCAL",
           "YIELD_REMOTE_MAX", "YIELD_POLL", "SWEEP_AT",
           # re-exported from the modules they moved to (``keystate``, ``wakeups``)
           "Waiter", "KeyState", "ANNOUNCE_PERIOD", "send_wake"]
