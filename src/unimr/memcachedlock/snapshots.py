"""Metrics snapshots: their format, their summary (counters and percentiles), and the files of many processes.

A process writes its metrics to ``<dir>/<host>-<pid>.json`` (see
``metrics``); ``memcachedlock stats`` reads the directory with
:func:`read_snapshots` and adds the files up with :func:`merge` and
:func:`merge_conflicts`: counters add up, percentiles are computed over the
union of the samples.  The files are shared, so everything read from them
is checked before it is used.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import TypedDict

logger = logging.getLogger(__name__)

COUNTERS = ("acquisitions", "waits", "wait_time", "releases", "hold_time",
            "busy_retries", "view_moves", "timeouts", "fallbacks", "lost", "to_locking", "to_optimistic")
SNAPSHOT_FORMAT = 1
#: The tables of ConflictErrors in a snapshot.
CONFLICT_TABLES = ("classes", "requests")


def add_count(counters: dict[str, float], field: str, amount: float = 1) -> None:
    """Add ``amount`` to the counter ``field`` (0 if it was never counted)."""
    counters[field] = counters.get(field, 0) + amount


def percentile(samples: Iterable[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``samples``; None if there are none."""
    ordered = sorted(samples)
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(counters: dict[str, float], waits: Iterable[float], holds: Iterable[float]) -> dict[str, float | None]:
    """Counters (every field, zero if never counted) plus wait/hold p50 and p99 in seconds."""
    waits = list(waits)
    holds = list(holds)
    data: dict[str, float | None] = {field: counters.get(field, 0) for field in COUNTERS}
    data.update(
        wait_p50=percentile(waits, 0.5), wait_p99=percentile(waits, 0.99),
        hold_p50=percentile(holds, 0.5), hold_p99=percentile(holds, 0.99),
    )
    return data


class Snapshot(TypedDict):
    """A snapshot file as ``read_snapshots`` returns it: ``time`` checked, the other fields as found (None
    if missing); the file is shared, so their readers check their types."""

    format: int
    host: object
    pid: object
    #: When it was written (0.0 if the file does not say).
    time: float
    prefixes: object
    conflicts: object
    #: The file it was read from.
    path: str


def read_snapshots(directory: str, max_age: float | None = None) -> list[Snapshot]:
    """The snapshot files in ``directory`` (newer than ``max_age`` seconds), oldest first.

    Unreadable or foreign files are skipped with a warning.
    """
    found: list[Snapshot] = []
    now = time.time()
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            logger.warning("skipping metrics snapshot %s: %s", path, exc)
            continue
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            logger.warning("skipping %s: not a memcachedlock metrics snapshot", path)
            continue
        written = next(iter(_numbers([data.get("time")])), 0.0)
        if max_age is not None and now - written > max_age:
            continue
        found.append(Snapshot(format=SNAPSHOT_FORMAT, host=data.get("host"), pid=data.get("pid"), time=written,
                              prefixes=data.get("prefixes"), conflicts=data.get("conflicts"), path=path))
    found.sort(key=lambda d: d.get("time", 0))
    return found


def _numbers(values: object) -> list[float]:
    """The finite numbers in a snapshot's list; anything else (a planted string) is dropped."""
    if not isinstance(values, list):
        return []
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def merge(snapshots: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float | None]]:
    """Counters summed and percentiles over all samples, by prefix, plus ``processes``.

    A snapshot is read from a shared directory: fields of the wrong type are skipped.
    """
    merged: dict[str, tuple[dict[str, float], list[float], list[float], set[tuple[str, str]]]] = {}
    for snap in snapshots:
        prefixes = snap.get("prefixes")
        if not isinstance(prefixes, dict):
            continue
        for prefix, data in prefixes.items():
            if not isinstance(data, dict):
                continue
            counters, waits, holds, procs = merged.setdefault(str(prefix), ({}, [], [], set()))
            found = data.get("counters")
            for field, value in (found.items() if isinstance(found, dict) else ()):
                if field in COUNTERS and _numbers([value]):
                    add_count(counters, field, float(value))
            waits.extend(_numbers(data.get("waits")))
            holds.extend(_numbers(data.get("holds")))
            procs.add((str(snap.get("host")), str(snap.get("pid"))))
    result: dict[str, dict[str, float | None]] = {}
    for prefix, (counters, waits, holds, procs) in merged.items():
        result[prefix] = summarize(counters, waits, holds)
        result[prefix]["processes"] = len(procs)
    return result


def merge_conflicts(snapshots: Iterable[Mapping[str, object]]) -> dict[str, list[tuple[str, int, int]]]:
    """ConflictErrors of all snapshots by table: (row, retried, failed), the most frequent first.

    A snapshot is read from a shared directory: fields of the wrong type are skipped.
    """
    summed: dict[str, dict[str, dict[str, float]]] = {table: {} for table in CONFLICT_TABLES}
    for snap in snapshots:
        tables = snap.get("conflicts")
        for table in CONFLICT_TABLES:
            rows = tables.get(table) if isinstance(tables, dict) else None
            for row, counts in (rows.items() if isinstance(rows, dict) else ()):
                for outcome in ("retried", "failed"):
                    for value in _numbers([counts.get(outcome) if isinstance(counts, dict) else None]):
                        add_count(summed[table].setdefault(str(row), {}), outcome, value)
    return {
        table: sorted(((row, int(c.get("retried", 0)), int(c.get("failed", 0))) for row, c in rows.items()),
                      key=lambda item: (-(item[1] + item[2]), item[0]))
        for table, rows in summed.items()
    }


__all__ = ["COUNTERS", "SNAPSHOT_FORMAT", "CONFLICT_TABLES", "add_count", "percentile", "summarize", "Snapshot",
           "read_snapshots", "merge", "merge_conflicts"]
