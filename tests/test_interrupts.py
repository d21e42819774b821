"""Interrupt safety: a KeyboardInterrupt at any line of acquire, release and the wait path.

A trace function (``sys.settrace``) counts the line events of the package's
own code in the calling thread and raises KeyboardInterrupt at the N-th; the
scenario runs once for every N.  Afterwards, with the interrupted lock
object dropped and garbage collected, the key must be free (another client
takes it at once, or after the reaper thread has given it back), no waiter
may be left in ``waiting``'s queues and no file descriptor may be leaked.
"""

from __future__ import annotations

import dis
import gc
import os
import sys
import threading
import time

import pytest

import unimr.memcachedlock
from unimr.memcachedlock import registry, waiting
from unimr.memcachedlock.backends.memcached import MemcachedBackend
from unimr.memcachedlock.config import parse_server
from unimr.memcachedlock.locks import Lock, RLock

PACKAGE_DIR = os.path.dirname(unimr.memcachedlock.__file__)


def _no_delivery(code) -> tuple[dict[int, int], set[int]]:
    """Where ``code``'s line events are not points at which CPython delivers an
    asynchronous exception: ({line: offset of BEFORE_WITH}, {offsets of NOPs})."""
    found = _NO_DELIVERY.get(code)
    if found is None:
        instructions = list(dis.get_instructions(code))
        found = _NO_DELIVERY[code] = (
            {i.positions.lineno: i.offset for i in instructions if i.opname == "BEFORE_WITH"},
            {i.offset for i in instructions if i.opname == "NOP"},
        )
    return found


_NO_DELIVERY: dict = {}


class Injector:
    """Raise KeyboardInterrupt at the ``at``-th line event of package code (0: never).

    Two kinds of line event are left out, because CPython 3.11 reports them
    at points where no asynchronous exception (signal handler, KeyboardInterrupt,
    PyThreadState_SetAsyncExc) is ever delivered: it checks for those at
    function starts, after calls and on backward jumps.  They are the event
    on a with statement's line just before ``__exit__`` is called, and the
    event of a ``try:`` line (a NOP).  The exception tables do not cover
    these points, so raising there would leave every ``with lock:`` locked,
    the standard library's included.
    """

    def __init__(self, at: int = 0, on_call: dict | None = None) -> None:
        self.at = at
        self.lines = 0
        #: (file, line) of every line event counted, in order
        self.trail: list[tuple[str, int]] = []
        self.fired = False
        self.where = ""
        #: function name -> callable run (once) when the traced thread first calls it
        self.on_call = dict(on_call or {})

    def __call__(self, frame, event, arg):
        if not frame.f_code.co_filename.startswith(PACKAGE_DIR) or frame.f_code.co_name == "__del__":
            return None  # finalizers of earlier runs' objects run at any point: not the code under test
        hook = self.on_call.pop(frame.f_code.co_name, None)
        if hook is not None:
            hook()
        return self.line

    def line(self, frame, event, arg):
        if event == "line" and self.deliverable(frame):
            self.lines += 1
            self.trail.append((frame.f_code.co_filename, frame.f_lineno))
            if self.lines == self.at:
                self.fired = True
                self.where = "%s:%d" % (os.path.basename(frame.f_code.co_filename), frame.f_lineno)
                raise KeyboardInterrupt("injected at line event %d (%s:%d)"
                                        % (self.at, os.path.basename(frame.f_code.co_filename), frame.f_lineno))
        return self.line

    @staticmethod
    def deliverable(frame) -> bool:
        with_lines, nops = _no_delivery(frame.f_code)
        lasti = frame.f_lasti
        return lasti not in nops and lasti <= with_lines.get(frame.f_lineno, lasti)

    def run(self, action) -> bool:
        """Run ``action`` traced; True if it was interrupted."""
        sys.settrace(self)
        try:
            action()
        except KeyboardInterrupt:
            return True
        finally:
            sys.settrace(None)
        return False


def open_fds() -> int:
    """Open file descriptors, not counting idle pooled connections (the pool may grow by one
    when the reaper and the test talk to the server at once; it is bounded, not a leak)."""
    from unimr.memcachedlock.backends.pool import _pools

    for pool in list(_pools):
        pool.close()
    return len(os.listdir("/proc/self/fd"))


def settle(condition, limit: float = 3.0) -> bool:
    """Wait (bounded) for the reaper thread to finish what an interrupt left to it."""
    deadline = time.monotonic() + limit
    while True:
        if condition():
            return True
        gc.collect()
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def nobody_waits() -> bool:
    with waiting._states_lock:
        return all(not state.queue and state.handed is None and state.sock is None
                   for state in waiting._states.values())


@pytest.fixture
def other(memcached):
    """Another client of the same server (another process, as far as waiting is concerned)."""
    backend = MemcachedBackend([parse_server(memcached.address)])
    yield backend
    backend.close()


def is_free(other: MemcachedBackend, key: str) -> bool:
    probe = Lock(key, backend=other)
    if probe.acquire(blocking=False):
        probe.release()
        return True
    return False


def sweep(scenario, other: MemcachedBackend) -> int:
    """Run ``scenario(key, injector)`` uninterrupted once to list its line events, then
    once interrupted at the first execution of each distinct line (a loop's later
    rounds repeat the same lines); check the invariants after every run."""
    calibration = Injector()
    assert not scenario("calibrate", calibration)
    first_events = sorted({place: number for number, place in reversed(list(enumerate(calibration.trail, 1)))}
                          .values())
    assert len(first_events) > 10
    waiting.send_wake(b"\0unimr.memcachedlock/test-nobody")  # opens the process's one sender socket
    baseline = open_fds()
    problems = []
    for at in first_events:
        key = "intr-%s-%d" % (scenario.__name__, at)
        injector = Injector(at)
        scenario(key, injector)
        if not settle(lambda key=key: is_free(other, key)):
            problems.append("line event %d (%s): key left locked" % (at, injector.where))
        if not settle(nobody_waits):
            problems.append("line event %d (%s): a waiter was left in the queue" % (at, injector.where))
        if not settle(lambda: open_fds() <= baseline):
            problems.append("line event %d (%s): %d fds leaked" % (at, injector.where, open_fds() - baseline))
    assert problems == []
    return len(first_events)


def test_interrupt_at_every_line_of_an_uncontended_acquire_and_release(memcached, other):
    def acquire_release(key: str, injector: Injector) -> bool:
        lock = Lock(key, timeout=5)
        interrupted = injector.run(lambda: (lock.acquire(), lock.release()))
        lock = None  # a holder dropped after an interrupt gives its lock back
        return interrupted

    sweep(acquire_release, other)


def test_interrupt_at_every_line_of_an_rlock_acquire_and_release(memcached, other):
    def acquire_release(key: str, injector: Injector) -> bool:
        lock = RLock(key, timeout=5)
        interrupted = injector.run(lambda: (lock.acquire(), lock.acquire(), lock.release(), lock.release()))
        lock = None
        return interrupted

    sweep(acquire_release, other)


def test_interrupt_at_every_line_of_a_wait_that_times_out(memcached, other):
    def wait_in_vain(key: str, injector: Injector) -> bool:
        holder = Lock(key, backend=other, timeout=5)
        assert holder.acquire(blocking=False)
        lock = Lock(key, timeout=5, interval=0.005)
        try:
            return injector.run(lambda: lock.acquire(timeout=0.03))
        finally:
            holder.release()

    sweep(wait_in_vain, other)


def test_interrupt_at_every_line_of_a_wait_ended_by_a_handover(memcached, other):
    """A thread of this process holds the key and hands it to the traced waiter."""

    def wait_for_handover(key: str, injector: Injector) -> bool:
        holder = Lock(key, timeout=5)
        assert holder.acquire(blocking=False)
        go = threading.Event()
        releaser = threading.Thread(target=lambda: (go.wait(5), holder.release()))
        releaser.start()
        injector.on_call["_sleep"] = go.set  # release once the waiter sleeps at the head of the queue
        lock = Lock(key, timeout=5, interval=0.005)
        try:
            interrupted = injector.run(lambda: (lock.acquire(timeout=5), lock.release()))
        finally:
            go.set()
            releaser.join()
        lock = None
        return interrupted

    sweep(wait_for_handover, other)


def test_interrupt_at_every_line_of_a_file_lock_acquire_and_release(lock_dir, monkeypatch):
    """The file store: a leaked descriptor would keep its flock for the life of the process."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    registry.reset()
    other = registry.get_backend().__class__(str(lock_dir))

    def acquire_release(key: str, injector: Injector) -> bool:
        lock = Lock(key, timeout=5)
        interrupted = injector.run(lambda: (lock.acquire(), lock.release()))
        lock = None
        return interrupted

    sweep(acquire_release, other)
