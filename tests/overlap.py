"""An overlap checker that works across threads and processes.

Each holder appends "enter" and "exit" records to a shared file opened with
O_APPEND (one write() per record is atomic); afterwards the records must
alternate enter/exit per key with the same holder.  Nothing here takes a lock
of its own, so it cannot hide a failure of the lock under test.
"""

from __future__ import annotations

import os
import time


class OverlapLog:
    def __init__(self, path: str) -> None:
        self.path = str(path)

    def enter(self, key: str, who: str) -> None:
        self._write("enter", key, who)

    def exit(self, key: str, who: str) -> None:
        self._write("exit", key, who)

    def _write(self, what: str, key: str, who: str) -> None:
        line = ("%s %s %s %.6f\n" % (what, key, who, time.time())).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self) -> list[tuple[str, str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as handle:
            return [tuple(line.split()[:3]) for line in handle if line.strip()]

    def violations(self) -> list[str]:
        """Every point where two holders of one key overlapped."""
        inside: dict[str, str] = {}
        problems = []
        for number, (what, key, who) in enumerate(self.records()):
            if what == "enter":
                if key in inside:
                    problems.append("#%d: %s entered %s held by %s" % (number, who, key, inside[key]))
                inside[key] = who
            else:
                if inside.get(key) != who:
                    problems.append("#%d: %s left %s held by %s" % (number, who, key, inside.get(key)))
                inside.pop(key, None)
        return problems

    def count(self, what: str = "enter") -> int:
        return sum(1 for record in self.records() if record[0] == what)
