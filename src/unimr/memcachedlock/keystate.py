"""What a process knows about one key while its threads wait for it or it yields it: the per-key state of ``waiting``.

A ``KeyState`` is this process's queue of waiting threads for one key of
one store, its wake-up socket, its announcement under ``<key>#want``, the
turn it yields to or owes another process, and a lease handed to its head.
Its methods are its transitions, each named for what happened: a thread
queues, becomes the head, takes the lock, is handed a lease or leaves; a
release frees the lock, or yields the key to another process.  ``waiting``
keeps the states of all keys and calls these methods; methods that say so
are called with its states lock held.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time

from .backends.base import Backend, WaiterBoard
from .backends.records import WANT_HOST, Want
from .errors import BackendUnavailable
from .lease import Lease
from .wakeups import bind_wake_socket, send_wake

logger = logging.getLogger(__name__)

#: How often the head refreshes its announcement (its TTL is ``records.WANT_TTL``).
ANNOUNCE_PERIOD = 0.5


class Waiter:
    """One thread waiting in its process's queue for a key."""

    __slots__ = ("event", "thread", "ttl")

    def __init__(self, ttl: float) -> None:
        self.event = threading.Event()
        self.thread = threading.current_thread()
        #: The lease the waiting lock asks for, should a lease be handed to it.
        self.ttl = ttl

    def wake(self) -> None:
        """Wake the thread (it became the head, or the lock was released or handed to it)."""
        self.event.set()

    def wait_woken(self, timeout: float | None) -> bool:
        """Sleep until woken or ``timeout`` passed; True if woken."""
        woken = self.event.wait(timeout)
        self.event.clear()
        return woken


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

    def waited_for(self) -> bool:
        """Threads of this process wait for the key now."""
        return bool(self.queue) or self.sock is not None

    def newcomers_queue(self) -> bool:
        """An acquisition must not try the store first: others of this process queue for the key,
        or this process yields it to another process."""
        if self.queue:
            return True
        return bool(self.yield_until) and time.monotonic() < self.yield_until

    def is_ours(self, want: Want | None) -> bool:
        """``want`` is this process's own announcement."""
        return want is not None and want.token == self.token

    def head(self) -> Waiter | None:
        """The thread at the head of the queue, if any."""
        try:
            return self.queue[0]
        except IndexError:
            return None

    def is_head(self, me: Waiter) -> bool:
        return self.queue[0] is me

    # -- transitions of the queue: a thread queues, becomes the head, takes the lock, leaves

    def queue_up(self, me: Waiter) -> bool:
        """A thread joins the queue; True if it is alone in it (caller holds the states lock)."""
        self.queue.append(me)
        return len(self.queue) <= 1

    def becomes_head(self) -> None:
        """The head starts its turn at polling: it binds the wake-up socket of this process."""
        if self.sock is None:
            self.sock, self.address = bind_wake_socket()
            self.since = time.time()
        self.acquired_by_head = False

    def took_lock(self, backend: Backend, name: str) -> None:
        """The head has the lock: the threads still queued here start their wait now,
        and the last of them withdraws this process's announcement."""
        self.acquired_by_head = True
        self.since = time.time()
        if self.announced and len(self.queue) <= 1:
            self.announced = False
            self.withdraw(backend, name)

    def leave(self, me: Waiter) -> tuple[Lease | None, socket.socket | None, bool]:
        """``me`` leaves the queue: the next thread is woken; the last one clears the wait
        (caller holds the states lock).

        Returns what is to be done outside the lock: a lease handed to nobody
        (to release), the wake-up socket (to close), and whether the
        announcement is to be withdrawn.
        """
        sock = None
        announced = False
        orphan = None
        with contextlib.suppress(ValueError):
            self.queue.remove(me)
        if self.queue:  # wake the head even if it was already woken: a spurious wake-up is harmless
            self.queue[0].wake()
            if self.address:
                send_wake(self.address)
        if not self.queue:
            orphan, self.handed = self.handed, None
            sock, self.sock, self.address = self.sock, None, b""
            announced, self.announced = self.announced, False
        return orphan, sock, announced

    def wake_head(self) -> None:
        if self.address:
            send_wake(self.address)
        else:
            with contextlib.suppress(IndexError):
                self.queue[0].wake()

    def wake_queued_head(self) -> None:
        """Wake the head, if a thread queues."""
        if self.queue:
            self.wake_head()

    # -- transitions of a handover: a lease is handed to the head, which takes it

    def may_receive(self) -> bool:
        """A releasing thread may hand its lease to this queue: someone queues and holds no lease yet."""
        return bool(self.queue) and self.handed is None

    def pays_owed_turn(self) -> bool:
        """True (and the debt paid) if this release owes another process its turn: it must free the lock."""
        if self.owe_turn:
            self.owe_turn = False
            return True
        return False

    def handed_over_seeing(self, want: Want | None) -> None:
        """A handover read ``want`` next to the lock: if another process waits, the next release frees it."""
        if want is not None and not self.is_ours(want):
            self.owe_turn = True

    def receive(self, lease: Lease) -> bool:
        """Keep ``lease`` for the head if a thread still queues; True if kept (caller holds the states lock)."""
        if not self.queue:
            return False
        self.handed = lease
        return True

    def take_handed(self) -> Lease | None:
        """The head takes the lease handed to it, if any (caller holds the states lock)."""
        lease, self.handed = self.handed, None
        return lease

    # -- transitions of turns between processes: a release frees the lock, or yields the key

    def lock_freed(self) -> None:
        """A release freed the lock: whoever waits elsewhere can take it now, no turn is owed."""
        self.owe_turn = False

    def yields_to(self, token: str, grace: float) -> None:
        """Leave the key to the waiter ``token`` of another process for ``grace`` seconds."""
        self.yield_to = token
        self.yield_until = time.monotonic() + grace

    def still_yielding(self, now: float, check: bool, held: bool, want: Want | None) -> bool:
        """End the yield once its time is up or a poll (``check``) saw the lock taken or the waiter gone;
        True while it lasts."""
        if self.yield_until and (
                now >= self.yield_until or (check and (held or want is None or want.token != self.yield_to))):
            self.yield_until = 0.0
            self.yield_to = None
        return bool(self.yield_until)

    # -- the announcement under ``<key>#want``

    def announce(self, store: WaiterBoard, name: str, want: Want | None, want_cas: bytes | None, delay: float,
                 now: float) -> None:
        """Put this process in the ``#want`` slot if it is free or ours, or if we waited longer."""
        mine = self.is_ours(want)
        if mine and now < self.next_announce:
            return
        record = Want(self.token, WANT_HOST, os.getpid(), self.since, delay, self.address).encode()
        try:
            if want is None:
                self.announced = bool(store.put_want(name, record, None, add=True))
            elif mine or want.since > self.since:
                self.announced = bool(store.put_want(name, record, want_cas, add=False))
            else:
                self.announced = False
        except BackendUnavailable as exc:
            logger.debug("could not announce a waiter for %s: %s", name, exc)
            return
        if self.announced:
            self.next_announce = now + ANNOUNCE_PERIOD

    def withdraw(self, backend: Backend, name: str) -> None:
        """Drop this process's announcement from the store."""
        store = backend.waiter_board
        if store is None:
            return
        try:
            store.drop_want(name, self.token)
        except BackendUnavailable as exc:
            logger.debug("could not withdraw the announcement for %s: %s", name, exc)


__all__ = ["Waiter", "KeyState", "ANNOUNCE_PERIOD"]
