"""In-process counters per key prefix: how much the locks wait, hold and retry.

A lock name made by a decorator reads ``module.function:key``; its prefix is
the part before the first colon, so every catalog's lock counts under
``Products.ZCatalog.ZCatalog.ZCatalog.catalog_object``.  Per prefix the
module counts acquisitions, contended acquisitions (waits), LockBusy
retries, views moved forward in place instead, timeouts, fallbacks to the file store and lost leases, and keeps the
last :data:`SAMPLES` wait and hold times for their p50/p99.  Recording is one
dict update under a lock: cheap enough for every acquisition.

The number of records is bounded: the first :data:`MAX_PREFIXES` prefixes a
process sees get a record each; later ones, like names without a colon, count
under ``(other)``.  Keys that put a varying part before the first colon
(``doc-1:edit``, ``doc-2:edit``...) so cost at most ``MAX_PREFIXES + 1``
records (about 64 KB each with full samples) and a snapshot file stays under
about 1.5 MB, however many keys a process locks.

ConflictErrors
--------------
A site counts the ConflictErrors its requests meet (the Zope subscriber in
``zope/conflicts.py``, loaded by ``conflicts.zcml`` and by the catalog
patch): by the conflicting object's class and by the request (method and
path), each with at most :data:`MAX_CONFLICT_ROWS` rows and the rest under
``(other)``.  ``memcachedlock stats`` lists the top ones, so an operator sees
which objects to lock before locking anything.

Reading them
------------
In the process: :func:`snapshot` (counters and percentiles by prefix) and
:func:`log_summary` (one debug line per prefix).

Across processes (a Zope site's ZEO clients): set ``MEMCACHEDLOCK_METRICS_DIR``
and every process that uses a lock writes ``<dir>/<host>-<pid>.json`` every
``MEMCACHEDLOCK_METRICS_INTERVAL`` seconds (default 60), when it exits, and
whenever :func:`write_snapshot` is called.  ``memcachedlock stats`` reads the
directory and merges the files (``snapshots``, whose names are importable
from here too): counters add up, percentiles are computed over the union of
the samples.  A plain file per process needs no server, no signal handler
(Zope uses SIGUSR2 itself) and survives its writer.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from . import config
from .errors import ConfigurationError
from .snapshots import (
    CONFLICT_TABLES,
    COUNTERS,
    SNAPSHOT_FORMAT,
    Snapshot,
    add_count,
    merge,
    merge_conflicts,
    percentile,
    read_snapshots,
    summarize,
)

logger = logging.getLogger(__name__)

#: Wait and hold times kept per prefix for the percentiles (the most recent ones).
SAMPLES = 1000
DEFAULT_INTERVAL = config.DEFAULT_METRICS_INTERVAL
#: Bounds of MEMCACHEDLOCK_METRICS_INTERVAL, in seconds.
MIN_INTERVAL = config.MIN_METRICS_INTERVAL
MAX_INTERVAL = config.MAX_METRICS_INTERVAL
#: Prefixes with a record of their own per process; the rest count under OTHER.
MAX_PREFIXES = 64
OTHER = "(other)"
#: Rows per table of ConflictErrors (by class, by request) per process; the rest count under OTHER.
MAX_CONFLICT_ROWS = 64

_lock = threading.Lock()


class _Prefix:
    """Counters and recent samples of one key prefix."""

    __slots__ = ("counters", "waits", "holds")

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.waits: collections.deque[float] = collections.deque(maxlen=SAMPLES)
        self.holds: collections.deque[float] = collections.deque(maxlen=SAMPLES)


_prefixes: dict[str, _Prefix] = {}
#: ConflictErrors by table, then row, then ``retried``/``failed``.
_conflicts: dict[str, dict[str, dict[str, float]]] = {table: {} for table in CONFLICT_TABLES}
_writer_pid: int | None = None
#: Bumped whenever the writer is restarted; an older writer thread then ends.
_writer_generation = 0
_settings_cache: tuple[str, float] | None = None


def prefix_of(name: str) -> str:
    """The part of a lock name before its first colon; ``(other)`` if it has none."""
    head, sep, _ = name.partition(":")
    return head if sep else OTHER


def _entry(name: str) -> _Prefix:
    """The prefix's record (OTHER's once MAX_PREFIXES prefixes have one); call with ``_lock`` held."""
    prefix = prefix_of(name)
    entry = _prefixes.get(prefix)
    if entry is None:
        if len(_prefixes) >= MAX_PREFIXES + (OTHER in _prefixes):
            prefix = OTHER
            entry = _prefixes.get(OTHER)
        if entry is None:
            entry = _prefixes[prefix] = _Prefix()
    return entry


def record_acquire(name: str, waited: float, contended: bool) -> None:
    """A lock was taken after ``waited`` seconds (``contended``: it was busy at first)."""
    with _lock:
        entry = _entry(name)
        add_count(entry.counters, "acquisitions")
        if contended:
            add_count(entry.counters, "waits")
            add_count(entry.counters, "wait_time", waited)
        entry.waits.append(waited)
    if _writer_pid != os.getpid():
        _start_writer()


def record_release(name: str, held: float) -> None:
    """A lock was released after being held ``held`` seconds."""
    with _lock:
        entry = _entry(name)
        add_count(entry.counters, "releases")
        add_count(entry.counters, "hold_time", held)
        entry.holds.append(held)


def _count(name: str, field: str) -> None:
    with _lock:
        add_count(_entry(name).counters, field)
    logger.debug("lock %s: %s", name, field)


def record_timeout(name: str) -> None:
    """A decorated call gave up waiting for its lock."""
    _count(name, "timeouts")


def record_busy(name: str) -> None:
    """zlock raised LockBusy, asking the transaction to be retried."""
    _count(name, "busy_retries")


def record_view_move(name: str) -> None:
    """zlock moved a transaction's view forward in place instead of raising LockBusy."""
    _count(name, "view_moves")


def record_switch(name: str, mode: str) -> None:
    """zlock policy adaptive switched ``name`` to ``mode`` (``locking`` or ``optimistic``) in this process."""
    _count(name, "to_" + mode)


def record_fallback(name: str) -> None:
    """A lock was taken in the file store because memcached was unreachable."""
    _count(name, "fallbacks")


def record_lost(name: str) -> None:
    """A held lock's lease was found expired or broken."""
    _count(name, "lost")


def record_conflict(class_name: str, request: str, retried: bool) -> None:
    """A request met a ConflictError on an object of ``class_name``; ``retried``: it will run again."""
    outcome = "retried" if retried else "failed"
    with _lock:
        for table, row in (("classes", class_name), ("requests", request)):
            rows = _conflicts[table]
            if row not in rows and len(rows) >= MAX_CONFLICT_ROWS + (OTHER in rows):
                row = OTHER
            add_count(rows.setdefault(row, {}), outcome)
    logger.debug("ConflictError on %s in %s (%s)", class_name, request, outcome)
    if _writer_pid != os.getpid():
        _start_writer()


def conflicts() -> dict[str, dict[str, dict[str, float]]]:
    """This process's ConflictErrors by table and row (a copy)."""
    with _lock:
        return {table: {row: dict(counts) for row, counts in rows.items()} for table, rows in _conflicts.items()}


def snapshot() -> dict[str, dict[str, float | None]]:
    """All counters and percentiles of this process, by key prefix (a copy)."""
    with _lock:
        copies = [(p, dict(e.counters), list(e.waits), list(e.holds)) for p, e in _prefixes.items()]
    return {prefix: summarize(c, w, h) for prefix, c, w, h in copies}


def report() -> dict[str, object]:
    """This process's metrics with their raw samples: what a snapshot file holds."""
    with _lock:
        prefixes = {
            prefix: {"counters": dict(e.counters), "waits": [round(x, 6) for x in e.waits],
                     "holds": [round(x, 6) for x in e.holds]}
            for prefix, e in _prefixes.items()
        }
    return {
        "format": SNAPSHOT_FORMAT,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        "prefixes": prefixes,
        "conflicts": conflicts(),
    }


def log_summary(level: int = logging.DEBUG) -> None:
    """Log one line per prefix: acquisitions, waits, p50/p99 of wait and hold, retries."""
    if not logger.isEnabledFor(level):
        return
    for prefix, data in sorted(snapshot().items()):
        logger.log(
            level,
            "locks %s: %d acquired, %d waited (p50 %s, p99 %s), held p50 %s p99 %s, "
            "%d busy retries, %d timeouts, %d fallbacks, %d lost",
            prefix, data["acquisitions"], data["waits"], _ms(data["wait_p50"]), _ms(data["wait_p99"]),
            _ms(data["hold_p50"]), _ms(data["hold_p99"]), data["busy_retries"], data["timeouts"],
            data["fallbacks"], data["lost"],
        )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else "%.1fms" % (seconds * 1000)


def reset() -> None:
    """Forget every counter and sample of this process, and the snapshot settings.

    The periodic writer stops; the next acquisition reads the environment again.
    """
    global _settings_cache, _writer_pid, _writer_generation
    with _lock:
        _prefixes.clear()
        for rows in _conflicts.values():
            rows.clear()
    with _writer_lock:
        _settings_cache = None
        _writer_pid = None
        _writer_generation += 1


# --------------------------------------------------------------------------- snapshot files


def metrics_settings(environ: Mapping[str, str] | None = None) -> tuple[str, float]:
    """``(directory, interval)`` from MEMCACHEDLOCK_METRICS_DIR / _INTERVAL; ``""`` if unset.

    ConfigurationError names a bad value.
    """
    env = os.environ if environ is None else environ
    return _checked_settings(env.get("MEMCACHEDLOCK_METRICS_DIR"), env.get("MEMCACHEDLOCK_METRICS_INTERVAL"))


def _checked_settings(directory: object, interval: object) -> tuple[str, float]:
    """The metrics settings parsed as :class:`.config.Settings` parses them: blank is not given, errors name it."""
    settings = config.Settings(metrics_dir=directory, metrics_interval=interval)
    return settings.metrics_dir, settings.metrics_interval


def configure_metrics(directory: str = "", interval: float | str = DEFAULT_INTERVAL) -> None:
    """Set the snapshot directory and interval in code (overrides the environment).

    ``directory=""`` turns the periodic snapshots off.  Values follow the
    environment's rule: blank text is not given (no directory, the default
    interval) and a bad value is a ConfigurationError naming it.
    """
    global _settings_cache
    _settings_cache = _checked_settings(directory, interval)
    _start_writer(force=True)


def _current_settings() -> tuple[str, float]:
    global _settings_cache
    if _settings_cache is None:
        try:
            settings = config.get_settings()
            _settings_cache = settings.metrics_dir, settings.metrics_interval
        except ConfigurationError as exc:
            logger.warning("metrics snapshots off: %s", exc)
            _settings_cache = ("", DEFAULT_INTERVAL)
    return _settings_cache


def snapshot_path(directory: str) -> str:
    """This process's snapshot file in ``directory``."""
    return os.path.join(directory, "%s-%d.json" % (socket.gethostname(), os.getpid()))


def write_snapshot(directory: str | None = None) -> str:
    """Write this process's metrics to its snapshot file now; return the path.

    ``directory`` defaults to the configured one; ConfigurationError if none is.
    The file is replaced atomically, so a reader never sees half of it.
    """
    directory = directory or _current_settings()[0]
    if not directory:
        raise ConfigurationError("no metrics directory: set MEMCACHEDLOCK_METRICS_DIR")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = snapshot_path(directory)
    tmp = "%s.%s.tmp" % (path, os.urandom(4).hex())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report(), f)
    os.replace(tmp, path)
    logger.debug("metrics snapshot written to %s", path)
    log_summary()
    return path


def _writer_loop(generation: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if generation != _writer_generation:
            return
        try:
            write_snapshot()
        except (OSError, ConfigurationError) as exc:
            logger.warning("could not write metrics snapshot: %s", exc)


def _write_at_exit() -> None:
    if _writer_pid == os.getpid() and _current_settings()[0]:
        try:
            write_snapshot()
        except (OSError, ConfigurationError) as exc:
            logger.warning("could not write metrics snapshot at exit: %s", exc)


_writer_lock = threading.Lock()
#: The at-exit snapshot is hooked when a writer first starts with a directory, not at import.
_exit_hooked = False


def _hook_exit() -> None:
    """Write a last snapshot at exit (once per process; caller holds ``_writer_lock``)."""
    global _exit_hooked
    if not _exit_hooked:
        _exit_hooked = True
        atexit.register(_write_at_exit)


def _start_writer(force: bool = False) -> None:
    """Start this process's periodic snapshot writer if a directory is configured."""
    global _writer_pid, _writer_generation
    with _writer_lock:
        pid = os.getpid()
        if _writer_pid == pid and not force:
            return
        _writer_pid = pid
        _writer_generation += 1
        directory, interval = _current_settings()
        if not directory:
            return
        _hook_exit()
        thread = threading.Thread(
            target=_writer_loop, args=(_writer_generation, interval), name="memcachedlock-metrics",
            daemon=True,
        )
        thread.start()


def _after_fork_in_child() -> None:
    """A child starts with empty metrics: its parent's are in the parent's file."""
    global _lock, _writer_lock
    _lock = threading.Lock()
    _writer_lock = threading.Lock()
    _prefixes.clear()
    for rows in _conflicts.values():
        rows.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["SAMPLES", "DEFAULT_INTERVAL", "MIN_INTERVAL", "MAX_INTERVAL", "MAX_PREFIXES", "OTHER", "MAX_CONFLICT_ROWS",
           "prefix_of", "record_acquire", "record_release", "record_timeout", "record_busy", "record_view_move",
           "record_switch", "record_fallback", "record_lost", "record_conflict", "conflicts", "snapshot", "report",
           "log_summary", "reset", "metrics_settings", "configure_metrics", "snapshot_path", "write_snapshot",
           # the snapshot format and the reading of snapshot files (``snapshots``)
           "COUNTERS", "SNAPSHOT_FORMAT", "CONFLICT_TABLES", "percentile", "summarize", "Snapshot", "read_snapshots",
           "merge", "merge_conflicts"]
