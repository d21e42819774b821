"""Do optimistic zlock commits of one key wait for each other?  Threads with slow commits, one key.

K threads each make N commits.  Every transaction uses the key with
``lock_for_transaction(key, policy="on-conflict")`` and writes its own
database (one MappingStorage per thread: the storages never serialise the
threads), and its two-phase commit takes V ms (a data manager whose vote
sleeps: a remote ZEO server, a big transaction).  Nothing conflicts, so a
lock that lets the commits overlap costs its round trips only, and one that
makes them take turns costs K x N x V.  Modes, in one run, against a
memcached on loopback started for the run:

``nolock``     no zlock call;
``memcached``  on-conflict through the memcached store;
``file``       on-conflict through the file store (a private lock directory).

Printed per mode: wall time and its ratio to ``nolock``.

Usage: ``python benchmarks/slow_commits.py [--threads 4] [--commits 50] [--vote-ms 5] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import transaction
import ZODB
from ZODB.MappingStorage import MappingStorage

from unimr.memcachedlock import lock_for_transaction, registry
from unimr.memcachedlock.tools.servers import MemcachedServer

KEY = "benchmark:slow-commits"
MODES = ("nolock", "memcached", "file")


class SlowVote:
    """A data manager whose vote takes ``seconds``."""

    def __init__(self, seconds: float, manager: object) -> None:
        self.seconds = seconds
        self.transaction_manager = manager

    def sortKey(self) -> str:
        return "~slow-vote"

    def tpc_vote(self, txn) -> None:
        time.sleep(self.seconds)

    def abort(self, txn) -> None:
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort


def client(commits: int, vote: float, locked: bool, errors: list) -> None:
    db = ZODB.DB(MappingStorage())
    conn = db.open()  # the thread's own transaction manager, which zlock follows
    try:
        for number in range(commits):
            transaction.begin()
            conn.root()["n"] = number
            if locked:
                assert lock_for_transaction(KEY, policy="on-conflict")
            transaction.get().join(SlowVote(vote, transaction.manager))
            transaction.commit()
    except BaseException as exc:  # reported by main
        errors.append(exc)
    finally:
        conn.close()
        db.close()


def run(mode: str, threads: int, commits: int, vote: float) -> float:
    if mode != "nolock":
        os.environ["MEMCACHEDLOCK_BACKEND"] = mode
        registry.reset()
    errors: list = []
    workers = [threading.Thread(target=client, args=(commits, vote, mode != "nolock", errors))
               for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--commits", type=int, default=50)
    parser.add_argument("--vote-ms", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with MemcachedServer() as server, tempfile.TemporaryDirectory() as lock_dir:
        os.environ["MEMCACHEDLOCK_SERVERS"] = server.address
        os.environ["MEMCACHEDLOCK_DIR"] = lock_dir
        print("%d threads x %d commits, each commit's vote %g ms; one key, policy on-conflict"
              % (args.threads, args.commits, args.vote_ms))
        print("| round | " + " | ".join(MODES) + " |")
        print("|---|" + "---|" * len(MODES))
        for round_number in range(1, args.repeat + 1):
            walls = {mode: run(mode, args.threads, args.commits, args.vote_ms / 1000.0) for mode in MODES}
            print("| %d | %s |" % (round_number, " | ".join(
                "%.2fs (%.2fx)" % (walls[mode], walls[mode] / walls["nolock"]) for mode in MODES)))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
