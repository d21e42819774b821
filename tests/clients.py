"""Other clients for the tests: ZEO clients in a thread, and client processes started together.

A client process prints ``ready`` when it has connected, waits for a line
on its stdin, works, and prints one JSON line as its last output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import transaction
import ZEO


def in_another_client(address: tuple[str, int], work: Callable[[Any], None]) -> None:
    """Commit ``work(root)`` as another ZEO client: a connection of its own, in a thread (its own transactions)."""
    errors: list = []

    def run() -> None:
        db = ZEO.DB(address)
        conn = db.open()
        try:
            with transaction.manager:
                work(conn.root())
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)
        finally:
            transaction.abort()
            conn.close()
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def run_clients(argvs: list[list[str]], env: dict, timeout: float = 240) -> list[dict]:
    """Start ``python *argv`` for each argv, release them together, return their reports in order."""
    procs = [subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True)
             for argv in argvs]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
