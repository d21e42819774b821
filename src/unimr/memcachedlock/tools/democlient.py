"""The demo's client processes: each commits N writes to one hot object, with or without ``zlock``.

A client runs as ``python -c`` of :func:`worker_main` (``demo`` starts it)
and talks JSON lines over its stdout; it exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import IO, Protocol

#: Attempts per write before a client gives up (transaction.manager.attempts).
MAX_ATTEMPTS = 500
MODES = ("nolock", "zlock")


def burn(work_ms: float) -> None:
    """Spend ``work_ms`` milliseconds of this thread's CPU time (the expensive work)."""
    end = time.thread_time() + work_ms / 1000.0
    while time.thread_time() < end:
        pass


class _Counts:
    executions = 0


class _Root(Protocol):
    """The database root as the clients use it: hot objects by name, each a mapping with its count."""

    def __getitem__(self, name: str) -> MutableMapping[str, int]: ...


def _update(root: _Root, name: str, lock_key: str, work_ms: float, counts: _Counts) -> None:
    """One write to the hot object: read it, do the work, write the result."""
    counts.executions += 1
    hot = root[name]
    value = hot["count"]
    burn(work_ms)
    hot["count"] = value + 1


def _lock_key(fun: Callable[[_Root, str, str, float, _Counts], None], root: _Root, name: str, lock_key: str,
              *args: float | _Counts) -> str:
    return lock_key


def _exit_when_parent_goes(stdin: IO[str]) -> None:
    """Leave at once when the parent closes our stdin (it ended, or was killed)."""
    for _ in stdin:
        pass
    os._exit(3)


def _worker_args(argv: Sequence[str]) -> argparse.Namespace:
    """The demo client's command line (``worker_main``)."""
    parser = argparse.ArgumentParser(prog="memcachedlock-demo-client")
    parser.add_argument("--zeo", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--writes", type=int, required=True)
    parser.add_argument("--work", type=float, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--key", required=True)
    return parser.parse_args(argv)


def worker_main(argv: Sequence[str]) -> int:
    """One demo client: ``--zeo PORT --mode nolock|zlock --writes N --work MS --name OBJ --key KEY``.

    Prints ``{"ready": ...}``, waits for ``go`` on stdin, then one JSON line
    per commit and ``{"done": ...}`` at the end.
    """
    args = _worker_args(argv)
    import transaction
    import ZEO
    from ZODB.POSException import ConflictError

    from ..zodb import LockBusy, zlock

    update = _update
    if args.mode == "zlock":
        update = zlock(_lock_key, timeout=30, interval=0.05)(_update)

    def emit(**data: int | dict[str, int]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    db = ZEO.DB(("127.0.0.1", args.zeo))
    counts = _Counts()
    attempts = busy = commits = failed = 0
    try:
        conn = db.open()
        emit(ready=os.getpid())
        if sys.stdin.readline().strip() != "go":
            return 3
        threading.Thread(target=_exit_when_parent_goes, args=(sys.stdin,), daemon=True).start()
        manager = transaction.manager
        for _ in range(args.writes):
            try:
                for attempt in manager.attempts(MAX_ATTEMPTS):
                    with attempt:
                        attempts += 1
                        try:
                            update(conn.root(), args.name, args.key, args.work, counts)
                        except ConflictError as exc:
                            if isinstance(exc, LockBusy):
                                busy += 1
                            raise
            except ConflictError:
                # Every attempt lost (a client whose retries keep starting on a view its own invalidations
                # have not reached yet): a request that failed, counted and reported; the run goes on.
                manager.abort()
                failed += 1
            else:
                commits += 1
            emit(commit=commits, attempts=attempts, busy=busy, executions=counts.executions, failed=failed)
        conn.close()
    finally:
        db.close()
    emit(done=dict(commits=commits, attempts=attempts, busy=busy, executions=counts.executions, failed=failed))
    return 0
