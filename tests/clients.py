"""Client processes for the tests: start several at once, let them go together, read their JSON reports.

A client prints ``ready`` when it has connected, waits for a line on its
stdin, works, and prints one JSON line as its last output.
"""

from __future__ import annotations

import json
import subprocess
import sys


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
