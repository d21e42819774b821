"""In-process counters per key prefix: how much the locks wait, hold and retry.

A lock name made by a decorator reads ``module.function:key``; its prefix is
the part before the first colon, so every catalog's lock counts under
``Products.ZCatalog.ZCatalog.ZCatalog.catalog_object``.  Recording is a dict
update under a lock: cheap enough for every acquisition.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_counters: dict[str, dict[str, float]] = {}


def prefix_of(name: str) -> str:
    head, sep, _ = name.partition(":")
    return head if sep else "(other)"


def _bump(name: str, field: str, amount: float = 1.0) -> None:
    prefix = prefix_of(name)
    with _lock:
        counters = _counters.get(prefix)
        if counters is None:
            counters = _counters[prefix] = {}
        counters[field] = counters.get(field, 0) + amount


def record_acquire(name: str, waited: float, contended: bool) -> None:
    """A lock was taken after ``waited`` seconds (``contended``: it was busy at first)."""
    _bump(name, "acquisitions")
    if contended:
        _bump(name, "waits")
        _bump(name, "wait_time", waited)


def record_release(name: str, held: float) -> None:
    """A lock was released after being held ``held`` seconds."""
    _bump(name, "releases")
    _bump(name, "hold_time", held)


def record_timeout(name: str) -> None:
    """A decorated call gave up waiting for its lock."""
    _bump(name, "timeouts")


def record_busy(name: str) -> None:
    """zlock raised LockBusy, asking the transaction to be retried."""
    _bump(name, "busy_retries")


def record_fallback(name: str) -> None:
    """A lock was taken in the file store because memcached was unreachable."""
    _bump(name, "fallbacks")


def record_lost(name: str) -> None:
    """A held lock's lease was found expired or broken."""
    _bump(name, "lost")


def snapshot() -> dict[str, dict[str, float]]:
    """A copy of all counters, by key prefix."""
    with _lock:
        return {prefix: dict(values) for prefix, values in _counters.items()}


def reset() -> None:
    with _lock:
        _counters.clear()
