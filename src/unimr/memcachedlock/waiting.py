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
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable

from .backends.base import Backend, WaiterBoard
from .backends.records import WANT_HOST, Want
from .errors import BackendUnavailable
from .lease import Lease, abandon

logger = logging.getLogger(__name__)

#: First pause between two polls of the head waiter (seconds).  Each poll
#: reads the lock and its announcement in one request.
FIRST_POLL = 0.001
#: Growth of the pause per poll, up to the lock's ``interval``.
BACKOFF = 1.5
#: How often the head refreshes its announcement (its TTL is ``records.WANT_TTL``).
ANNOUNCE_PERIOD = 0.5
#: How long a releaser leaves the lock to a waiter it woke on this host.
YIELD_LOCAL = 0.02
#: Upper bound of the yield to a waiter on another host (it polls; it announced its pause).
YIELD_REMOTE_MAX = 0.25
#: Pause while yielding, between two checks whether the announced waiter took the lock.
YIELD_POLL = 0.001
#: Above this many remembered keys, releases sweep out the idle ones.
SWEEP_AT = 64

# -- wake-up datagrams --------------------------------------------------------------------

_sender: socket.socket | None = None
_sender_lock = threading.Lock()


def send_wake(address: bytes) -> bool:
    """Send a wake-up datagram to a waiter's socket; True if it was delivered to a live socket."""
    global _sender
    if not address:
        return False
    sender = _sender
    if sender is None:
        with _sender_lock:
            if _sender is None:
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                except OSError:
                    return False
                sock.setblocking(False)
                _sender = sock
            sender = _sender
    try:
        sender.sendto(b"w", address)
        return True
    except BlockingIOError:
        return True  # its queue is full of wake-ups already
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            logger.debug("wake-up datagram to %r failed: %s", address, exc)
        return False


def _bind_wake_socket() -> tuple[socket.socket | None, bytes]:
    """A datagram socket in the abstract namespace, bound to a random name (Linux)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except (OSError, AttributeError):
        return None, b""
    address = b"\0unimr.memcachedlock/" + os.urandom(8).hex().encode("ascii")
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        return None, b""
    return sock, address


# -- per process and key ------------------------------------------------------------------

class Waiter:
    """One thread waiting in its process's queue for a key."""

    __slots__ = ("event", "thread", "ttl")

    def __init__(self, ttl: float) -> None:
        self.event = threading.Event()
        self.thread = threading.current_thread()
        #: The lease the waiting lock asks for, should a lease be handed to it.
        self.ttl = ttl


class KeyState:
    """What this process knows about one key of one store while it waits or yields."""

    __slots__ = ("queue", "token", "sock", "address", "since", "announced", "next_announce",
                 "yield_to", "yield_until", "acquired_by_head", "handed", "owe_turn")

    def __init__(self) -> None:
        self.queue: collections.deque[Waiter] = collections.deque()
        self.token = os.urandom(8).hex()
        self.sock: socket.socket | None = None
        self.address = b""
        self.since = 0.0
        self.announced = False
        self.next_announce = 0.0
        self.yield_to: str | None = None
        self.yield_until = 0.0
        self.acquired_by_head = False
        #: A lease a releasing thread of this process handed to the head of the queue.
        self.handed: Lease | None = None
        #: A handover saw another process waiting: the next release must free the lock.  Kept
        #: while no thread of this process waits, until a release frees the lock: the threads
        #: take turns holding, and each turn would otherwise start with no debt.
        self.owe_turn = False

    def idle(self, now: float) -> bool:
        return not self.queue and now >= self.yield_until and self.handed is None and not self.owe_turn


_states: dict[tuple[int, str], KeyState] = {}
_states_lock = threading.Lock()


def _key(backend: Backend, name: str) -> tuple[int, str]:
    return (id(backend), name)


def must_queue(backend: Backend, name: str) -> bool:
    """True if an acquisition must not try the store first: others of this process
    queue for the key, or this process yields it to another process."""
    state = _states.get((id(backend), name))
    if state is None:
        return False
    if state.queue:
        return True
    if state.yield_until and time.monotonic() < state.yield_until:
        return True
    with _states_lock:
        if _states.get((id(backend), name)) is state and state.idle(time.monotonic()):
            del _states[(id(backend), name)]
    return False


def released(backend: Backend, name: str, successor: bytes | None) -> None:
    """A thread of this process released ``name``: wake the next waiter, here or elsewhere.

    ``successor`` is the announcement the release found next to the lock.
    When it names another process, that process is woken (if it is on this
    host) and this process yields the key to it for a short while.
    """
    state = _states.get((id(backend), name))
    if state is not None:
        state.owe_turn = False  # the lock is free: whoever waits elsewhere can take it now
    want = Want.decode(successor) if successor else None
    if want is not None and (state is None or want.token != state.token):
        woke = want.local and send_wake(want.address)
        if want.local and not woke:
            grace = 0.0  # it announced a socket on this host that nobody reads: gone
        elif woke:
            grace = YIELD_LOCAL
        else:
            grace = min(YIELD_REMOTE_MAX, 2 * want.pause + 0.002)
        if grace > 0:
            with _states_lock:
                state = _states.get((id(backend), name))
                if state is None:
                    state = _states[(id(backend), name)] = KeyState()
                state.yield_to = want.token
                state.yield_until = time.monotonic() + grace
                if len(_states) > SWEEP_AT:
                    _sweep()
    if state is not None and state.queue:
        _wake_head(state)


def _sweep() -> None:
    """Forget keys nobody here waits for or yields any more (caller holds ``_states_lock``)."""
    now = time.monotonic()
    for key in [key for key, state in _states.items() if state.idle(now)]:
        del _states[key]


def waiting_keys() -> int:
    """How many keys threads of this process wait for now (for tests and metrics)."""
    with _states_lock:
        return sum(1 for state in _states.values() if state.queue or state.sock is not None)


def hand_over(backend: Backend, name: str, lease: Lease) -> bool:
    """Give ``lease``, still held, to the next thread of this process queued for ``name``.

    The lock never becomes free: it changes threads inside the process that
    holds it.  One round trip rewrites the lock's record for the receiving
    thread (only if it is still the very item this lease stored, proven as for
    the one-round-trip release) and reads the waiter announcement.  If another
    process is announced, this handover still happens but the next release
    frees the lock, so that process gets the following turn.  Only memcached
    leases are handed over (the file store keeps no announcements).  Returns
    True if the lease was handed (or, its receiver gone, released).
    """
    state = _states.get(_key(backend, name))
    if state is None or not state.queue or state.handed is not None or not lease.held:
        return False
    if state.owe_turn:
        state.owe_turn = False
        return False
    store = backend.waiter_board
    if store is None or lease.backend is not store:
        return False
    try:
        head = state.queue[0]
    except IndexError:
        return False  # the last waiter left meanwhile
    try:
        want = store.hand_record_over(lease, head.thread, head.ttl)
    except BackendUnavailable:
        return False
    if want is False:
        return False
    if want is not None and want.token != state.token:
        state.owe_turn = True
    with _states_lock:
        receiver = bool(state.queue) and _states.get(_key(backend, name)) is state
        if receiver:
            state.handed = lease
    if not receiver:
        lease.release()
        return True
    _wake_head(state)
    return True


def _take_handed(state: KeyState) -> Lease | None:
    with _states_lock:
        lease, state.handed = state.handed, None
    return lease


def _wake_head(state: KeyState) -> None:
    if state.address:
        send_wake(state.address)
    else:
        with contextlib.suppress(IndexError):
            state.queue[0].event.set()


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
            state = _states.get(_key(backend, name))
            if state is None:
                state = _states[_key(backend, name)] = KeyState()
            seat.state = state
            state.queue.append(me)
            if len(state.queue) > 1:
                immediate = False
        while True:
            if state.queue[0] is me:
                return _lead(backend, name, state, try_acquire, deadline, interval, immediate)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            me.event.wait(remaining)
            me.event.clear()
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
    sock = None
    announced = False
    orphan = None
    with _states_lock:
        with contextlib.suppress(ValueError):
            state.queue.remove(me)
        if state.queue:  # wake the head even if it was already woken: a spurious wake-up is harmless
            state.queue[0].event.set()
            if state.address:
                send_wake(state.address)
        if not state.queue:
            orphan, state.handed = state.handed, None
            sock, state.sock, state.address = state.sock, None, b""
            announced, state.announced = state.announced, False
            if _states.get(_key(backend, name)) is state and state.idle(time.monotonic()):
                del _states[_key(backend, name)]
    if orphan is not None:
        orphan.release()  # handed over as the last waiter gave up: nobody takes it now
    if sock is not None:
        sock.close()
    if announced:
        _withdraw(backend, name, state)


def _withdraw(backend: Backend, name: str, state: KeyState) -> None:
    store = backend.waiter_board
    if store is None:
        return
    try:
        store.drop_want(name, state.token)
    except BackendUnavailable as exc:
        logger.debug("could not withdraw the announcement for %s: %s", name, exc)


def _lead(backend: Backend, name: str, state: KeyState, try_acquire: Callable[[], Lease | None],
          deadline: float | None, interval: float, immediate: bool) -> Lease | None:
    """The head's loop: poll the store, announce this process, wait for wake-ups."""
    store = backend.waiter_board
    if state.sock is None:
        state.sock, state.address = _bind_wake_socket()
        state.since = time.time()
    state.acquired_by_head = False
    delay = FIRST_POLL
    direct = immediate
    while True:
        handed = _take_handed(state) if state.handed is not None else None
        if handed is not None:
            _took_it(backend, name, state)
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
        if state.yield_until and (
                now >= state.yield_until or (check and (held or want is None or want.token != state.yield_to))):
            state.yield_until = 0.0
            state.yield_to = None
        yielding = bool(state.yield_until)
        if not yielding and (direct or not check or not held):
            result = try_acquire()
            if result is not None:
                _took_it(backend, name, state)
                return result
        if store is not None and check and not yielding:
            _announce(store, name, state, want, want_cas, delay, now)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        pause = YIELD_POLL if yielding else delay * (0.5 + random.random())
        if deadline is not None:
            pause = min(pause, deadline - now)
        direct = _sleep(state, pause)
        if not yielding:
            delay = min(interval, delay * BACKOFF)


def _took_it(backend: Backend, name: str, state: KeyState) -> None:
    """The head has the lock: the threads still queued here start their wait now,
    and the last of them withdraws this process's announcement."""
    state.acquired_by_head = True
    state.since = time.time()
    if state.announced and len(state.queue) <= 1:
        state.announced = False
        _withdraw(backend, name, state)


def _announce(store: WaiterBoard, name: str, state: KeyState, want: Want | None, want_cas: bytes | None, delay: float,
              now: float) -> None:
    """Put this process in the ``#want`` slot if it is free or ours, or if we waited longer."""
    mine = want is not None and want.token == state.token
    if mine and now < state.next_announce:
        return
    record = Want(state.token, WANT_HOST, os.getpid(), state.since, delay, state.address).encode()
    try:
        if want is None:
            state.announced = bool(store.put_want(name, record, None, add=True))
        elif mine or want.since > state.since:
            state.announced = bool(store.put_want(name, record, want_cas, add=False))
        else:
            state.announced = False
    except BackendUnavailable as exc:
        logger.debug("could not announce a waiter for %s: %s", name, exc)
        return
    if state.announced:
        state.next_announce = now + ANNOUNCE_PERIOD


def _sleep(state: KeyState, pause: float) -> bool:
    """Sleep ``pause`` seconds or until a wake-up arrives; True if woken (the lock was released)."""
    if pause <= 0:
        return False
    sock = state.sock
    if sock is None:
        me = state.queue[0] if state.queue else None
        if me is None:
            time.sleep(pause)
            return False
        woken = me.event.wait(pause)
        me.event.clear()
        return woken
    woken = False
    try:
        sock.settimeout(pause)
        sock.recv(16)
        woken = True
        sock.setblocking(False)
        while True:
            sock.recv(16)
    except (TimeoutError, BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        logger.debug("wake-up socket failed: %s", exc)
        time.sleep(pause)
    return woken


def _after_fork_in_child() -> None:
    global _states_lock, _sender, _sender_lock
    _states_lock = threading.Lock()
    _sender_lock = threading.Lock()
    _sender = None
    _states.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
