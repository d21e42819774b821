"""The ``lock`` and ``rlock`` decorators: thin wrappers over the lock objects.

``get_key(fun, *args, **kw)`` receives the undecorated function and the
call's arguments and returns the key that names what is being protected (a
catalog's physical path, say).  The lock name is the function's module and
qualified name plus that key, as in the 2009 package.  ``get_key`` raising
:class:`DontLock` means "call it unlocked"; any other exception propagates.

A decorated call waits at most ``wait`` seconds for its lock (by default the
lease ``timeout`` plus two seconds: long enough for a crashed holder's lease
to run out) and raises :class:`LockTimeout` after that.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

from . import metrics
from .errors import DontLock, InvalidKey, LockTimeout, SelfDeadlock
from .keys import key_to_bytes, shown
from .locks import BaseLock, Lock, RLock
from .options import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, LockOptions

P = ParamSpec("P")
R = TypeVar("R")
#: What ``get_key(fun, *args, **kw)`` returns: the key that names what a call protects.
GetKey = Callable[..., str | bytes | int]


class _Held(threading.local):
    """The locks this thread holds through the decorators, by key."""

    def __init__(self) -> None:
        self.lock: dict[bytes, Lock] = {}
        self.rlock: dict[bytes, RLock] = {}


_local = _Held()


def function_prefix(fun: Callable[..., object]) -> str:
    """``module.qualname:``, the start of every lock name a decorated function uses."""
    return "%s.%s:" % (fun.__module__, getattr(fun, "__qualname__", fun.__name__))


def call_key(prefix: str, get_key: GetKey, fun: Callable[..., object], args: tuple[object, ...],
             kw: dict[str, object]) -> bytes:
    """The lock key for one call; DontLock and get_key's own errors propagate."""
    key = get_key(fun, *args, **kw)
    try:
        return prefix.encode("utf-8") + key_to_bytes(key)
    except InvalidKey:
        raise InvalidKey(
            "get_key %s returned %s %r for %s; return str, bytes or int"
            % (getattr(get_key, "__qualname__", get_key), type(key).__name__, key, prefix[:-1])
        ) from None


def acquire_or_raise(lock: BaseLock, wait: float) -> None:
    """Acquire ``lock`` within ``wait`` seconds or raise LockTimeout naming it."""
    started = time.monotonic()
    if not lock.acquire(timeout=wait):
        metrics.record_timeout(lock.name)
        raise LockTimeout(
            "waited %.1fs for lock %s and gave up (lease %.0fs)"
            % (time.monotonic() - started, shown(lock.key), lock.timeout)
        )


def rlocks_held() -> dict[bytes, RLock]:
    """The RLocks this thread holds through ``rlock`` (and zlock outside a transaction)."""
    return _local.rlock


class Runner(Protocol):
    """How a decorated call runs once its key is known: ``run(key, options, fun, args, kwargs)``."""

    def __call__(self, key: bytes, options: LockOptions, fun: Callable[..., R], args: tuple[object, ...],
                 kwargs: dict[str, object]) -> R:
        """Run ``fun(*args, **kwargs)`` locked as the decorator says; return its result."""


def locking_decorator(get_key: GetKey, options: LockOptions, run: Runner) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The one decorator factory behind ``lock``, ``rlock`` and ``zlock``.

    The options are checked when the decorator is made; each call's key is
    computed (DontLock: call unlocked) and the call handed to ``run``, which
    decides how it is locked.
    """

    def decorate(fun: Callable[P, R]) -> Callable[P, R]:
        prefix = function_prefix(fun)

        @functools.wraps(fun)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                key = call_key(prefix, get_key, fun, args, kwargs)
            except DontLock:
                return fun(*args, **kwargs)
            return run(key, options, fun, args, kwargs)

        return wrapper

    return decorate


def run_locked(key: bytes, options: LockOptions, fun: Callable[..., R], args: tuple[object, ...],
               kwargs: dict[str, object]) -> R:
    """Hold a Lock for ``key`` during the call; re-entry by the same thread is an error."""
    held = _local.lock
    if key in held:
        raise SelfDeadlock(
            "%r is called again for key %r while this thread holds it; use @rlock for reentrant calls"
            % (getattr(fun, "__qualname__", fun), key)
        )
    the_lock = Lock(key, options.timeout, options.interval)
    acquire_or_raise(the_lock, options.wait)
    held[key] = the_lock
    try:
        return fun(*args, **kwargs)
    finally:
        del held[key]
        the_lock.release()


def run_rlocked(key: bytes, options: LockOptions, fun: Callable[..., R], args: tuple[object, ...],
                kwargs: dict[str, object]) -> R:
    """Hold an RLock for ``key`` during the call, re-entrantly within the thread."""
    held = _local.rlock
    the_lock = held.get(key)
    if the_lock is None:
        the_lock = RLock(key, options.timeout, options.interval)
        acquire_or_raise(the_lock, options.wait)
        held[key] = the_lock
    else:
        the_lock.acquire()
    try:
        return fun(*args, **kwargs)
    finally:
        the_lock.release()
        if the_lock.lease is None:
            held.pop(key, None)


def lock(get_key: GetKey, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
         wait: float | None = None, **kw: float) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Serialise calls with the same key across threads and processes (not reentrant)."""
    return locking_decorator(get_key, LockOptions.from_keywords(timeout, interval, wait, kw), run_locked)


def rlock(get_key: GetKey, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
          wait: float | None = None, **kw: float) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Like ``lock``, but a thread may re-enter calls for a key it holds."""
    return locking_decorator(get_key, LockOptions.from_keywords(timeout, interval, wait, kw), run_rlocked)
