"""The benchmark's scenarios: latency, handoff and load while waiting, each measured against a baseline.

``bench`` (the command line) runs them and ``benchreport`` prints what they
return; the tests run some of them directly.  The workers they start in
other processes (``spawn``) import this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypedDict

from .servers import MemcachedServer

if TYPE_CHECKING:
    import multiprocessing.synchronize

    from pymemcache.client.base import Client

    from ..backends.base import Backend

#: memcached ``stats`` counters that each count one request (a key of a multi-get counts once).
REQUEST_COUNTERS = ("cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses",
                    "incr_hits", "incr_misses", "decr_hits", "decr_misses")


class FileLatency(TypedDict, total=False):
    """The file store's part of ``latency``: microseconds per pair, medians and per round."""

    file_raw_us: float
    file_ours_us: float
    file_ratio: float
    file_raw_rounds_us: list[float]
    file_ours_rounds_us: list[float]
    file_ratio_rounds: list[float]


class Latency(FileLatency):
    """What ``latency`` measures: memcached's part, and the file store's unless left out."""

    raw_us: float
    ours_us: float
    raw_rounds_us: list[float]
    ours_rounds_us: list[float]
    ratio: float
    ratio_rounds: list[float]


class Turns(TypedDict):
    """What ``analyse_turns`` finds in the turns of a handoff run."""

    turns: int
    handoffs: int
    alternated: int
    alternation: float
    shares: dict[int, int]
    p50_ms: float
    p99_ms: float
    max_gap_ms: float


class Handoff(Turns):
    """One ``handoff`` run: its turns analysed, and how it ran."""

    mode: str
    kind: str
    hold_ms: float


class Waiting(TypedDict):
    """One ``waiting_load`` run: the waiters and the requests per second they cost."""

    processes: int
    threads: int
    wait_s: float
    requests: int
    early_per_s: float
    late_per_s: float
    early_per_s_per_process: float
    late_per_s_per_process: float


# -- a private memcached -------------------------------------------------------------------

@contextlib.contextmanager
def private_memcached() -> Iterator[str]:
    """Start memcached on a free loopback port; yield ``host:port``; stop it afterwards."""
    if shutil.which("memcached") is None:
        raise RuntimeError("memcached is not installed (apt-get install memcached) and no --servers given")
    with MemcachedServer() as server:
        yield server.address


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def server_stats(address: str) -> dict[str, int]:
    """memcached's ``stats`` as integers (non-numeric values are left out)."""
    from ..backends.memcached import server_command
    from ..config import parse_server

    stats: dict[str, int] = {}
    for line in server_command(parse_server(address), b"stats").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            stats[parts[1]] = int(parts[2])
    return stats


def request_count(address: str) -> int:
    """Requests the server has answered so far (see REQUEST_COUNTERS)."""
    stats = server_stats(address)
    return sum(stats.get(name, 0) for name in REQUEST_COUNTERS)


def _backend(address: str, kind: str = "memcached", lock_dir: str | None = None) -> Backend:
    from ..config import Settings, parse_servers
    from ..registry import make_backend

    settings = Settings(servers=parse_servers(address), backend=kind,
                        lock_dir=lock_dir
                        or os.path.join(tempfile.gettempdir(), "memcachedlock-bench-%d" % os.getuid()))
    return make_backend(settings)


def _raw_client(address: str) -> Client:
    from pymemcache.client.base import Client

    return Client(_host_port(address), no_delay=True, default_noreply=False,
                  connect_timeout=0.5, timeout=1.0)


# -- latency ------------------------------------------------------------------------------

def _per_op(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n


def latency(address: str, n: int = 2000, rounds: int = 5, file_backend: bool = True) -> Latency:
    """Uncontended acquire+release (ours) against raw add+delete, in microseconds.

    The two alternate in ``rounds`` rounds of ``n`` pairs; the median round
    counts, so a burst of noise from other processes hits both sides.
    """
    from ..locks import Lock

    raw = _raw_client(address)
    backend = _backend(address, "memcached")
    lock = Lock("bench:latency", backend=backend)

    def raw_pairs(count: int) -> None:
        add, delete = raw.add, raw.delete
        for _ in range(count):
            add("bench:raw", b"1", expire=30)
            delete("bench:raw")

    def our_pairs(count: int) -> None:
        acquire, release = lock.acquire, lock.release
        for _ in range(count):
            acquire()
            release()

    results: dict[str, list[float]] = {"raw": [], "ours": []}
    raw_pairs(200)
    our_pairs(200)
    for _ in range(rounds):
        results["raw"].append(_per_op(raw_pairs, n))
        results["ours"].append(_per_op(our_pairs, n))
    raw_us = statistics.median(results["raw"]) * 1e6
    ours_us = statistics.median(results["ours"]) * 1e6
    out: Latency = {
        "raw_us": raw_us,
        "ours_us": ours_us,
        "raw_rounds_us": [round(x * 1e6, 1) for x in results["raw"]],
        "ours_rounds_us": [round(x * 1e6, 1) for x in results["ours"]],
        "ratio": ours_us / raw_us,
        "ratio_rounds": [round(o / r, 3) for o, r in zip(results["ours"], results["raw"], strict=True)],
    }
    raw.close()
    backend.close()
    if file_backend:
        out = {**out, **_file_latency(n, rounds)}
    return out


def _file_latency(n: int, rounds: int) -> FileLatency:
    from ..backends.file import FileBackend
    from ..locks import Lock

    with tempfile.TemporaryDirectory(prefix="memcachedlock-bench-") as directory:
        backend = FileBackend(directory)
        lock = Lock("bench:file", backend=backend)
        path = os.path.join(directory, "raw.lock")

        def raw_pairs(count: int) -> None:
            for _ in range(count):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

        def our_pairs(count: int) -> None:
            for _ in range(count):
                lock.acquire()
                lock.release()

        raw_t: list[float] = []
        ours_t: list[float] = []
        for _ in range(rounds):
            raw_t.append(_per_op(raw_pairs, n))
            ours_t.append(_per_op(our_pairs, n))
    raw_us = statistics.median(raw_t) * 1e6
    ours_us = statistics.median(ours_t) * 1e6
    return {"file_raw_us": raw_us, "file_ours_us": ours_us, "file_ratio": ours_us / raw_us,
            "file_raw_rounds_us": [round(x * 1e6, 1) for x in raw_t],
            "file_ours_rounds_us": [round(x * 1e6, 1) for x in ours_t],
            "file_ratio_rounds": [round(o / r, 3) for o, r in zip(ours_t, raw_t, strict=True)]}


# -- handoff ------------------------------------------------------------------------------

def _turn_worker(address: str, kind: str, worker: int, start_at: float, stop_at: float, hold: float, key: str,
                 events: list[tuple[float, float, int]] | None = None) -> list[tuple[float, float, int]]:
    """Loop acquire / hold / release until ``stop_at``; return (acquired, released, worker) per turn."""
    out: list[tuple[float, float, int]] = [] if events is None else events
    if kind == "raw":
        client = _raw_client(address)
        while time.monotonic() < start_at:
            time.sleep(0.0005)
        while True:
            while not client.add(key, b"%d" % worker, expire=30):
                if time.monotonic() >= stop_at:
                    return out
                time.sleep(0.001)
            acquired = time.monotonic()
            time.sleep(hold)
            released = time.monotonic()
            client.delete(key)
            out.append((acquired, released, worker))
            if released >= stop_at:
                return out
    from ..locks import Lock

    backend = _backend(address, "memcached") if kind == "ours" else None
    lock = Lock(key, backend=_SHARED_BACKEND.get(address) or backend)
    while time.monotonic() < start_at:
        time.sleep(0.0005)
    while True:
        if not lock.acquire(timeout=max(0.0, stop_at - time.monotonic()) + 2.0):
            return out
        acquired = time.monotonic()
        time.sleep(hold)
        released = time.monotonic()
        lock.release()
        out.append((acquired, released, worker))
        if released >= stop_at:
            return out


_SHARED_BACKEND: dict[str, Backend] = {}


def _process_worker(args: tuple[str, str, int, float, float, float, str]) -> list[tuple[float, float, int]]:
    return _turn_worker(*args)


def analyse_turns(events: Sequence[tuple[float, float, int]], workers: int = 2) -> Turns:
    """Handoff latencies, alternation and starvation from (acquired, released, worker) turns.

    A handoff is a turn taken by another worker than the turn before; its
    latency runs from the previous release to this acquisition.  A worker's
    longest wait includes the stretch before its first turn and after its
    last one, so a starved worker shows the whole run.
    """
    turns = sorted(events)
    gaps = []
    alternated = 0
    for prev, cur in zip(turns, turns[1:], strict=False):
        if cur[2] != prev[2]:
            alternated += 1
            gaps.append(cur[0] - prev[1])
    gaps.sort()
    shares = {w: sum(1 for t in turns if t[2] == w) for w in range(workers)}
    longest_wait = 0.0
    if turns:
        begin, end = turns[0][0], max(t[1] for t in turns)
        for w in range(workers):
            marks = [begin] + [x for t in turns if t[2] == w for x in (t[0], t[1])] + [end]
            for free_from, taken in zip(marks[0::2], marks[1::2], strict=False):
                longest_wait = max(longest_wait, taken - free_from)

    def pct(p: float) -> float:
        return gaps[min(len(gaps) - 1, int(p * len(gaps)))] * 1e3 if gaps else float("nan")

    return {
        "turns": len(turns),
        "handoffs": max(0, len(turns) - 1),
        "alternated": alternated,
        "alternation": alternated / max(1, len(turns) - 1),
        "shares": shares,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_gap_ms": longest_wait * 1e3,
    }


def handoff(address: str, mode: str = "process", kind: str = "ours", duration: float = 0.4,
            hold: float = 0.005) -> Handoff:
    """Two workers taking turns on one key for ``duration`` seconds; see ``analyse_turns``."""
    key = "bench:handoff:%s:%s:%s" % (mode, kind, os.urandom(4).hex())
    if mode == "process":
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            pool.map(_noop, range(2))  # workers are up and imported before the clock starts
            start_at = time.monotonic() + 0.3
            args = [(address, kind, w, start_at, start_at + duration, hold, key) for w in range(2)]
            results = pool.map(_process_worker, args)
        events = [e for r in results for e in r]
    else:
        if kind == "ours":
            _SHARED_BACKEND[address] = _backend(address, "memcached")
        try:
            events_list: list[tuple[float, float, int]] = []
            start_at = time.monotonic() + 0.05
            threads = [threading.Thread(target=_turn_worker,
                                        args=(address, kind, w, start_at, start_at + duration, hold, key, events_list))
                       for w in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            events = events_list
        finally:
            backend = _SHARED_BACKEND.pop(address, None)
            if backend is not None:
                backend.close()
    result: Handoff = {**analyse_turns(events), "mode": mode, "kind": kind, "hold_ms": hold * 1e3}
    return result


def _noop(_: int) -> None:
    import unimr.memcachedlock.locks  # noqa: F401  (warm the import before timing)


# -- load while waiting -------------------------------------------------------------------

def _waiting_process(address: str, key: str, threads: int, wait: float,
                     ready: multiprocessing.synchronize.Event) -> int:
    """``threads`` threads of this process wait ``wait`` seconds for ``key``; return how many got it."""
    from ..locks import Lock

    backend = _backend(address, "memcached")
    got = []
    ready.wait()

    def waiter() -> None:
        lock = Lock(key, backend=backend)
        if lock.acquire(timeout=wait):
            got.append(1)
            lock.release()

    pool = [threading.Thread(target=waiter) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    backend.close()
    return len(got)


def waiting_load(address: str, processes: int = 4, threads: int = 1, wait: float = 2.0,
                 first: float = 0.2) -> Waiting:
    """Requests per second while ``processes`` x ``threads`` waiters wait for a held key.

    The holder takes the key first and keeps it past the wait, so every
    waiter times out; the rate is given for the first ``first`` seconds and
    for the rest of the wait.
    """
    from ..locks import Lock

    key = "bench:waiting:%s" % os.urandom(4).hex()
    backend = _backend(address, "memcached")
    holder = Lock(key, timeout=60, backend=backend)
    holder.acquire()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    procs = [ctx.Process(target=_waiting_process, args=(address, key, threads, wait, ready))
             for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let the children import; they wait on ``ready``
    before = request_count(address)
    t0 = time.monotonic()
    ready.set()
    time.sleep(first)
    middle = request_count(address)
    t1 = time.monotonic()
    for p in procs:
        p.join(wait + 10)
    after = request_count(address)
    t2 = time.monotonic()
    holder.release()
    backend.close()
    early = (middle - before) / (t1 - t0)
    late = (after - middle) / max(1e-9, t2 - t1)
    return {
        "processes": processes, "threads": threads, "wait_s": wait,
        "requests": after - before,
        "early_per_s": early, "late_per_s": late,
        "early_per_s_per_process": early / processes,
        "late_per_s_per_process": late / processes,
    }

