"""Bounded load test: processes x threads hammering a few keys, with an overlap checker.

Every worker thread loops until the deadline: it picks a key, takes its lock
(waiting at most ``--wait`` seconds), and inside the critical section appends
an enter line to a shared log (one ``O_APPEND`` write, atomic), increments the
key's counter file by read-modify-write, and appends an exit line before
releasing.  Afterwards the checker proves that

* mutual exclusion held: in the log, each key's enter/exit lines alternate
  and every exit belongs to the enter before it;
* nothing was lost: every counter equals the number of acquisitions of its
  key, which equals what the workers reported.

Full size (the issue's figure)::

    .venv/bin/python benchmarks/load.py --processes 4 --threads 20 --keys 10 --duration 30

With no ``--servers`` a private memcached is started on a free loopback port
(needs the ``memcached`` binary).  ``tests/test_load.py`` runs a scaled-down
version of the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker_thread(keys: list[str], deadline: float, wait: float, log_fd: int, counter_dir: str,
                   hold: float, stats: dict[str, Any], stats_lock: threading.Lock) -> None:
    from unimr.memcachedlock.locks import Lock

    ident = "%d-%d" % (os.getpid(), threading.get_ident())
    done: dict[str, int] = {}
    timeouts = 0
    errors = 0
    rng = random.Random()
    while time.monotonic() < deadline:
        key = rng.choice(keys)
        lock = Lock("load:" + key, timeout=10)
        try:
            if not lock.acquire(timeout=wait):
                timeouts += 1
                continue
        except Exception as exc:
            errors += 1
            print("acquire failed: %r" % (exc,), file=sys.stderr)
            time.sleep(0.01)
            continue
        try:
            os.write(log_fd, ("E %s %s\n" % (key, ident)).encode())
            path = os.path.join(counter_dir, key)
            with open(path, "r+") as f:
                count = int(f.read() or 0)
                if hold:
                    time.sleep(hold)
                f.seek(0)
                f.write(str(count + 1))
                f.truncate()
            os.write(log_fd, ("X %s %s\n" % (key, ident)).encode())
            done[key] = done.get(key, 0) + 1
        finally:
            lock.release()
    with stats_lock:
        for key, n in done.items():
            stats["per_key"][key] = stats["per_key"].get(key, 0) + n
        stats["timeouts"] += timeouts
        stats["errors"] += errors


def run_worker(args: argparse.Namespace) -> None:
    """One worker process: ``--threads`` threads until ``--duration`` runs out; JSON on stdout."""
    keys = ["k%d" % i for i in range(args.keys)]
    log_fd = os.open(os.path.join(args.workdir, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stats: dict[str, Any] = {"per_key": {}, "timeouts": 0, "errors": 0}
    stats_lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.duration
    threads = [
        threading.Thread(
            target=_worker_thread,
            args=(keys, deadline, args.wait, log_fd, os.path.join(args.workdir, "counters"),
                  args.hold, stats, stats_lock),
        )
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.close(log_fd)
    stats["elapsed"] = time.monotonic() - start
    print(json.dumps(stats))


def check_log(path: str) -> tuple[int, list[str]]:
    """Count critical sections in the log; list every overlap or mismatched exit."""
    inside: dict[str, str | None] = {}
    problems: list[str] = []
    sections = 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            kind, key, ident = line.split()
            current = inside.get(key)
            if kind == "E":
                if current is not None:
                    problems.append("line %d: %s entered %s while %s was inside" % (number, ident, key, current))
                inside[key] = ident
            else:
                if current != ident:
                    problems.append("line %d: %s left %s but %s was inside" % (number, ident, key, current))
                inside[key] = None
                sections += 1
    problems.extend("%s never left %s" % (ident, key) for key, ident in inside.items() if ident is not None)
    return sections, problems


def run_load(processes: int, threads: int, keys: int, duration: float, env: dict[str, str],
             wait: float = 10.0, hold: float = 0.0) -> dict[str, Any]:
    """Run the load in ``processes`` worker processes; return the checked figures."""
    with tempfile.TemporaryDirectory(prefix="memcachedlock-load-") as workdir:
        os.mkdir(os.path.join(workdir, "counters"))
        for i in range(keys):
            with open(os.path.join(workdir, "counters", "k%d" % i), "w") as f:
                f.write("0")
        child_env = dict(os.environ)
        child_env.update(env)
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--workdir", workdir,
                   "--threads", str(threads), "--keys", str(keys), "--duration", str(duration),
                   "--wait", str(wait), "--hold", str(hold)]
        started = time.monotonic()
        procs = [subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(processes)]
        reports = []
        stderr = []
        for proc in procs:
            out, err = proc.communicate(timeout=duration + 60)
            stderr.append(err.decode(errors="replace"))
            if proc.returncode != 0:
                raise RuntimeError("load worker failed (%d): %s" % (proc.returncode, err.decode(errors="replace")))
            reports.append(json.loads(out))
        elapsed = time.monotonic() - started
        sections, problems = check_log(os.path.join(workdir, "log"))
        counters = {}
        for i in range(keys):
            with open(os.path.join(workdir, "counters", "k%d" % i)) as f:
                counters["k%d" % i] = int(f.read())
    per_key: dict[str, int] = {}
    for report in reports:
        for key, n in report["per_key"].items():
            per_key[key] = per_key.get(key, 0) + n
    acquisitions = sum(per_key.values())
    run_time = max(r["elapsed"] for r in reports)
    lost = {k: (per_key.get(k, 0), counters[k]) for k in counters if per_key.get(k, 0) != counters[k]}
    return {
        "processes": processes, "threads": threads, "keys": keys, "duration": duration,
        "acquisitions": acquisitions, "sections_logged": sections,
        "per_second": acquisitions / run_time if run_time else 0.0,
        "timeouts": sum(r["timeouts"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "overlaps": problems, "lost_updates": lost, "elapsed": elapsed,
        "stderr": "".join(stderr)[-2000:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--wait", type=float, default=10.0, help="longest wait for one lock")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to sleep inside the lock")
    parser.add_argument("--backend", default="fallback", choices=("fallback", "memcached", "file"))
    parser.add_argument("--servers", default=None, help="memcached servers (default: start one)")
    parser.add_argument("--lock-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    server = None
    servers = args.servers
    if servers is None and args.backend != "file":
        from unimr.memcachedlock.tools.servers import MemcachedServer

        server = MemcachedServer().start()
        servers = server.address
    lock_dir = args.lock_dir or tempfile.mkdtemp(prefix="memcachedlock-load-locks-")
    env = {"MEMCACHEDLOCK_BACKEND": args.backend, "MEMCACHEDLOCK_DIR": lock_dir}
    if servers:
        env["MEMCACHEDLOCK_SERVERS"] = servers
    try:
        result = run_load(args.processes, args.threads, args.keys, args.duration, env, args.wait, args.hold)
    finally:
        if server is not None:
            server.kill()
    print("%(processes)d processes x %(threads)d threads on %(keys)d keys for %(duration).0fs: "
          "%(acquisitions)d acquisitions, %(per_second).0f/s, %(timeouts)d timeouts, %(errors)d errors"
          % result)
    print("overlaps: %d, lost updates: %d" % (len(result["overlaps"]), len(result["lost_updates"])))
    for problem in result["overlaps"][:10]:
        print("  " + problem)
    ok = not result["overlaps"] and not result["lost_updates"] and result["sections_logged"] == result["acquisitions"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
