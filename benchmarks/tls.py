"""The lock over TLS against plain memcached: uncontended acquire+release, and a handoff between two threads.

    .venv/bin/python benchmarks/tls.py [-n 1000] [--rounds 5] [--duration 0.4] [--hold 0.002] [--json]

Starts two private memcached servers on free loopback ports in one run: one
plain, one ``-Z`` that requires a client certificate (``ssl_verify_mode=2``),
with certificates made for the run by ``tests/tlscerts.py`` (``cryptography``).
The two sides alternate, round by round, so a noisy machine moves both alike;
the median round counts.  Connections are pooled and kept, so the TLS
handshake is paid once per connection (in the warm-up), not per lock: what
is measured is TLS's cost per request.  Prints a table; exit status 0 if the
uncontended ratio TLS / plain meets the goal (at most 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from tlscerts import make_certificates, tls_memcached  # noqa: E402

from unimr.memcachedlock.backends.memcached import MemcachedBackend  # noqa: E402
from unimr.memcachedlock.config import parse_servers  # noqa: E402
from unimr.memcachedlock.locks import Lock  # noqa: E402
from unimr.memcachedlock.tls import client_context  # noqa: E402
from unimr.memcachedlock.tools.benchscenarios import analyse_turns  # noqa: E402
from unimr.memcachedlock.tools.servers import MemcachedServer  # noqa: E402

#: The most an uncontended acquire+release over TLS may cost, in plain ones.
GOAL = 1.3


def _per_pair(lock: Lock, n: int) -> float:
    """Seconds per acquire+release, over ``n`` pairs."""
    acquire, release = lock.acquire, lock.release
    start = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter() - start) / n


def uncontended(stores: dict[str, MemcachedBackend], n: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per acquire+release of each store, per round (the stores alternate within a round)."""
    locks = {side: Lock("bench:tls:uncontended", backend=store) for side, store in stores.items()}
    for lock in locks.values():
        _per_pair(lock, 200)  # connect (and shake hands) before the clock starts
    found: dict[str, list[float]] = {side: [] for side in stores}
    for _ in range(rounds):
        for side, lock in locks.items():
            found[side].append(_per_pair(lock, n) * 1e6)
    return found


def handoff(store: MemcachedBackend, duration: float, hold: float) -> dict[str, float]:
    """Two threads taking turns on one key for ``duration`` seconds: handoff p50/p99 in ms, alternation."""
    key = "bench:tls:handoff:%s" % os.urandom(4).hex()
    events: list[tuple[float, float, int]] = []
    start_at = time.monotonic() + 0.05
    stop_at = start_at + duration

    def worker(number: int) -> None:
        lock = Lock(key, backend=store)
        while time.monotonic() < start_at:
            time.sleep(0.0005)
        while lock.acquire(timeout=max(0.0, stop_at - time.monotonic()) + 2.0):
            acquired = time.monotonic()
            time.sleep(hold)
            released = time.monotonic()
            lock.release()
            events.append((acquired, released, number))
            if released >= stop_at:
                return

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 30)
    turns = analyse_turns(events)
    return {"p50_ms": turns["p50_ms"], "p99_ms": turns["p99_ms"], "alternation": turns["alternation"],
            "turns": turns["turns"]}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(n: int, rounds: int, duration: float, hold: float) -> dict[str, object]:
    """Both servers started, both sides measured, the ratios computed."""
    with tempfile.TemporaryDirectory(prefix="memcachedlock-bench-tls-") as directory:
        certs = make_certificates(Path(directory))
        with MemcachedServer() as plain, tls_memcached(certs) as tls:
            context = client_context(certs.ca, certs.client_cert, certs.client_key)
            stores = {"plain": MemcachedBackend(parse_servers(plain.address)),
                      "tls": MemcachedBackend(parse_servers(tls.address), tls_context=context)}
            try:
                pairs = uncontended(stores, n, rounds)
                turns: dict[str, list[dict[str, float]]] = {side: [] for side in stores}
                for _ in range(max(1, rounds // 2)):
                    for side, store in stores.items():
                        turns[side].append(handoff(store, duration, hold))
            finally:
                for store in stores.values():
                    store.close()
    result: dict[str, object] = {"n": n, "rounds": rounds, "duration_s": duration, "hold_ms": hold * 1e3}
    for side in stores:
        result[side] = {
            "uncontended_us": round(_median(pairs[side]), 1),
            "uncontended_rounds_us": [round(x, 1) for x in pairs[side]],
            "handoff_p50_ms": round(_median([t["p50_ms"] for t in turns[side]]), 3),
            "handoff_p99_ms": round(_median([t["p99_ms"] for t in turns[side]]), 3),
            "alternation": round(_median([t["alternation"] for t in turns[side]]), 3),
        }
    plain_side, tls_side = result["plain"], result["tls"]
    assert isinstance(plain_side, dict) and isinstance(tls_side, dict)
    result["uncontended_ratio"] = round(tls_side["uncontended_us"] / plain_side["uncontended_us"], 3)
    result["uncontended_ratio_rounds"] = [round(t / p, 3) for p, t in zip(pairs["plain"], pairs["tls"], strict=True)]
    result["handoff_ratio"] = round(tls_side["handoff_p50_ms"] / plain_side["handoff_p50_ms"], 3)
    return result


def print_table(result: dict[str, object], write: Callable[[str], object] = sys.stdout.write) -> None:
    plain, tls = result["plain"], result["tls"]
    assert isinstance(plain, dict) and isinstance(tls, dict)
    rows = [("uncontended acquire+release (us)", plain["uncontended_us"], tls["uncontended_us"],
             result["uncontended_ratio"]),
            ("handoff between two threads, p50 (ms)", plain["handoff_p50_ms"], tls["handoff_p50_ms"],
             result["handoff_ratio"]),
            ("handoff between two threads, p99 (ms)", plain["handoff_p99_ms"], tls["handoff_p99_ms"], ""),
            ("handoff alternation", plain["alternation"], tls["alternation"], "")]
    write("%-40s %10s %10s %9s\n" % ("", "plain", "TLS", "TLS/plain"))
    for label, left, right, ratio in rows:
        write("%-40s %10s %10s %9s\n" % (label, left, right, ratio))
    write("uncontended ratio per round: %s (goal <= %.1f)\n" % (result["uncontended_ratio_rounds"], GOAL))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="pairs per uncontended round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default %(default)s)")
    parser.add_argument("--duration", type=float, default=0.4, help="seconds of one handoff run")
    parser.add_argument("--hold", type=float, default=0.002, help="seconds a thread holds the lock")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    result = measure(args.n, args.rounds, args.duration, args.hold)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    ratio = result["uncontended_ratio"]
    assert isinstance(ratio, float)
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
