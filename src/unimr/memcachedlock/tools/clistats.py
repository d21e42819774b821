"""``memcachedlock stats``: the metrics snapshots of all processes, merged per key prefix."""

from __future__ import annotations

import argparse
import os
import time
from typing import IO

from ..config import is_unset
from .cliargs import EXIT_NO, EXIT_OK, EXIT_USAGE, CommandError
from .cliformat import clean, print_json, seconds, table
from .clisettings import instance_config


def cmd_stats(args: argparse.Namespace, out: IO[str]) -> int:
    from .. import metrics

    # A blank --dir is no --dir (the settings' rule); a relative one is fine here: it only reads.
    instance = instance_config(args)
    environ = instance.environ(dict(os.environ)) if instance else None
    directory = metrics.metrics_settings(environ)[0] if is_unset(args.dir) else args.dir
    if not directory:
        raise CommandError("no metrics directory: give --dir or set MEMCACHEDLOCK_METRICS_DIR", EXIT_USAGE)
    if not os.path.isdir(directory):
        raise CommandError("metrics directory %s does not exist" % directory, EXIT_NO)
    snapshots = metrics.read_snapshots(directory, args.max_age)
    merged = metrics.merge(snapshots)
    conflicts = metrics.merge_conflicts(snapshots)
    if args.json:
        print_json({"directory": directory, "snapshots": len(snapshots), "prefixes": merged,
                    "conflicts": {table: [{"name": name, "retried": retried, "failed": failed}
                                          for name, retried, failed in rows]
                                  for table, rows in conflicts.items()}}, out)
        return EXIT_OK if snapshots else EXIT_NO
    if not snapshots:
        out.write("no metrics snapshots in %s (a process writes one every MEMCACHEDLOCK_METRICS_INTERVAL "
                  "seconds once it has used a lock or counted a ConflictError, and at exit)\n" % clean(directory))
        return EXIT_NO
    newest = max(s.get("time", 0) for s in snapshots)
    out.write("%d snapshot(s) in %s, newest %s ago\n\n"
              % (len(snapshots), clean(directory), seconds(time.time() - newest)))
    rows = []
    for prefix, data in sorted(merged.items()):
        rows.append([
            prefix, data["processes"], _count(data["acquisitions"]), _count(data["waits"]),
            seconds(data["wait_p50"]), seconds(data["wait_p99"]),
            seconds(data["hold_p50"]), seconds(data["hold_p99"]),
            _count(data["busy_retries"]), _count(data["view_moves"]), _count(data["timeouts"]),
            _count(data["fallbacks"]), _count(data["lost"]),
            "%d/%d" % (_count(data["to_locking"]), _count(data["to_optimistic"])),
        ])
    if not rows:
        out.write("no lock used in these snapshots\n")
    else:
        out.write(table(("PREFIX", "PROCS", "ACQUIRED", "WAITED", "WAIT p50", "WAIT p99", "HOLD p50", "HOLD p99",
                         "BUSY", "MOVED", "TIMEOUTS", "FALLBACKS", "LOST", "LOCKED/FREED"), rows,
                        right=tuple(range(1, 14))) + "\n")
    _write_conflicts(conflicts, args.top, out)
    return EXIT_OK


def _count(value: float | None) -> int:
    """A counter of ``metrics.merge``: never None (``metrics.summarize`` gives every counter, 0 if none counted)."""
    assert value is not None, "a merged counter is a number"
    return int(value)


def _write_conflicts(conflicts: dict[str, list[tuple[str, int, int]]], top: int, out: IO[str]) -> None:
    """The most frequent ConflictErrors by object class and by request (counted by conflicts.zcml)."""
    if not any(conflicts.values()):
        out.write("\nno ConflictErrors counted (conflicts.zcml counts them; the catalog patch includes it)\n")
        return
    for kind, heading in (("classes", "OBJECT CLASS"), ("requests", "REQUEST")):
        rows = conflicts[kind]
        out.write("\nConflictErrors by %s (top %d of %d)\n" % (heading.lower(), min(top, len(rows)), len(rows)))
        out.write(table((heading, "RETRIED", "FAILED"),
                        [[clean(name), retried, failed] for name, retried, failed in rows[:top]],
                        right=(1, 2)) + "\n")
