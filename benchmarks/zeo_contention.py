"""K ZEO client processes write one hot object: no lock, zlock, and the ideal.

Each client makes N writes; each write does W ms of CPU work and then
increments a counter on one persistent object, retried by
``transaction.manager.attempts()``.  Modes, in one run, each on a fresh object
of one real ZEO server (default clients, ``server_sync`` off, unless noted):

``nolock``  the work runs on whatever view the transaction has; conflicts waste it.
``zlock``   the work runs inside a ``@zlock`` function, zlock's default policy (``adaptive``) unless
            ``--policy`` names another (memcached on loopback).
``ideal``   an ``flock`` around the whole transaction with ``ZEO.DB(server_sync=True)``:
            the lock is taken before ``begin()`` and released after the commit.

Printed per mode: commits, executions of the work wasted per commit (runs that
did not end in a commit), retries per commit (attempts beyond the first),
wall time, and the ratio of the wall time to the ideal.  The counter must end
at exactly K x N (nothing lost).

Usage: ``python benchmarks/zeo_contention.py [--clients 4] [--writes 20] [--work-ms 20] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from unimr.memcachedlock.tools.servers import MemcachedServer  # noqa: E402

from zeoserver import ZEOServer  # noqa: E402

MODES = ("nolock", "zlock", "ideal")
MAX_ATTEMPTS = 1000


def burn(ms: float) -> None:
    """W ms of CPU time in this thread (the expensive work a conflict wastes)."""
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        for i in range(200):
            x += i * i


def client(args: argparse.Namespace) -> None:
    """One client process: connect, say ready, wait for go, write, report JSON."""
    import transaction
    import ZEO

    from unimr.memcachedlock.zodb import LockBusy, zlock

    db = ZEO.DB(("127.0.0.1", args.zeo), server_sync=(args.mode == "ideal"))
    conn = db.open()
    stats = dict(executions=0, commits=0, attempts=0, busy=0, failed=0)
    name = args.object

    def work() -> None:
        stats["executions"] += 1
        burn(args.work_ms)
        counter = conn.root()[name]
        counter["value"] = counter["value"] + 1

    locked_work = zlock(lambda fun: name, timeout=30, interval=0.05, policy=args.policy)(work)
    print("ready", flush=True)
    sys.stdin.readline()
    manager = transaction.manager
    for _ in range(args.writes):
        lock_file = None
        if args.mode == "ideal":
            lock_file = open(args.flock, "a")  # noqa: SIM115  (closed in the finally below)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            done = False
            for attempt in manager.attempts(MAX_ATTEMPTS):
                with attempt:
                    stats["attempts"] += 1
                    try:
                        (locked_work if args.mode == "zlock" else work)()
                    except LockBusy:
                        stats["busy"] += 1
                        raise
                done = True
            if done:
                stats["commits"] += 1
            else:
                stats["failed"] += 1
        finally:
            if lock_file is not None:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_file.close()
    conn.close()
    db.close()
    print(json.dumps(stats), flush=True)


def setup_object(port: int, name: str) -> None:
    import transaction
    import ZEO
    from persistent.mapping import PersistentMapping

    db = ZEO.DB(("127.0.0.1", port))
    with db.transaction() as conn:
        conn.root()[name] = PersistentMapping(value=0)
    db.close()
    transaction.abort()


def read_counter(port: int, name: str) -> int:
    import ZEO

    db = ZEO.DB(("127.0.0.1", port), server_sync=True)
    with db.transaction() as conn:
        value = conn.root()[name]["value"]
    db.close()
    return value


def run_mode(mode: str, args: argparse.Namespace, zeo: ZEOServer, memcached: MemcachedServer,
             workdir: str, round_no: int) -> dict:
    name = "counter-%s-%d" % (mode, round_no)
    setup_object(zeo.port, name)
    env = dict(os.environ, MEMCACHEDLOCK_SERVERS=memcached.address, MEMCACHEDLOCK_BACKEND=args.store,
               MEMCACHEDLOCK_DIR=os.path.join(workdir, "locks"))
    cmd = [sys.executable, os.path.abspath(__file__), "--client", "--mode", mode, "--policy", args.policy,
           "--zeo", str(zeo.port),
           "--writes", str(args.writes), "--work-ms", str(args.work_ms), "--object", name,
           "--flock", os.path.join(workdir, "ideal.lock")]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
             for _ in range(args.clients)]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError("client did not start: %r" % line)
        started = time.monotonic()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            results.append(json.loads(out.strip().splitlines()[-1]))
            if proc.returncode:
                raise RuntimeError("client exited with %d" % proc.returncode)
        wall = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    total = {k: sum(r[k] for r in results) for k in results[0]}
    total["wall"] = wall
    total["counter"] = read_counter(zeo.port, name)
    total["mode"] = mode
    return total


def report(row: dict, ideal_wall: float | None) -> str:
    commits = row["commits"] or 1
    wasted = (row["executions"] - row["commits"]) / commits
    retries = (row["attempts"] - row["commits"]) / commits
    ratio = "%.2fx" % (row["wall"] / ideal_wall) if ideal_wall else "-"
    lost = row["commits"] - row["counter"]
    return ("  %-7s %3d commits  counter %3d (lost %d, gave up %d)  wasted/commit %.3f  "
            "retries/commit %.3f (zlock busy %d)  wall %.2fs  vs ideal %s") % (
               row["mode"], row["commits"], row["counter"], lost, row["failed"], wasted, retries,
               row["busy"], row["wall"], ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--work-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--store", choices=("fallback", "memcached"), default="fallback",
                        help="the lock store (default fallback: a site's unless it sets one)")
    parser.add_argument("--policy", default="adaptive", choices=("adaptive", "always", "on-conflict"),
                        help="the zlock policy of mode zlock")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--zeo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--object", help=argparse.SUPPRESS)
    parser.add_argument("--flock", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client(args)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODES:
            parser.error("unknown mode %r: use %s" % (mode, ", ".join(MODES)))
    print("%d clients x %d writes x %g ms of work, one object, transaction.manager.attempts()"
          % (args.clients, args.writes, args.work_ms))
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mcl-zeo-bench-") as workdir, \
            ZEOServer() as zeo, MemcachedServer() as memcached:
        for round_no in range(1, args.repeat + 1):
            rows = {mode: run_mode(mode, args, zeo, memcached, workdir, round_no) for mode in modes}
            ideal = rows.get("ideal", {}).get("wall")
            print("run %d:" % round_no)
            for mode in modes:
                print(report(rows[mode], ideal))
                if rows[mode]["counter"] != args.clients * args.writes:
                    failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
