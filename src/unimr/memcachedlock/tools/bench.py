"""Measurements behind the performance claims: latency, handoff and waiting load.

Every figure is measured in one run against a baseline on the same server,
so that a noisy machine moves both sides alike:

* ``latency``: an uncontended acquire+release of our Lock against a raw
  pymemcache ``add``+``delete`` pair (the unsafe minimum, given its best
  settings), and the file store against a raw ``open``+``flock`` pair.
* ``handoff``: two workers (processes or threads) take turns on one key:
  acquire, hold, release, acquire again.  Reports the time from one
  worker's release to the other's acquisition (p50/p99), how many turns
  alternated, and each worker's share (a starved worker has none).  The raw
  baseline polls ``add`` every millisecond.
* ``waiting``: one holder keeps a key while N threads in each of M processes
  wait for it; memcached's ``stats`` counters say how many requests the
  waiters sent per second, compared with M single-threaded waiters.

``main(argv)`` is the command line (``memcachedlock bench``); with no
``--servers`` it starts a private memcached on a free loopback port.  A
benchmark reports, it does not judge: the exit status is 0 whatever the
figures, unless ``--check`` asks for the goals to be checked (exit 1 if one
is missed).  Bad arguments are one line with exit status 2, a memcached that
cannot be reached or started one line with exit status 3.

The scenarios live in ``benchscenarios``, the tables and goals in
``benchreport``; their public names are importable from here too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .benchreport import Report, missed_goals, print_handoff, print_latency, print_report, print_waiting
from .benchscenarios import (
    REQUEST_COUNTERS,
    FileLatency,
    Handoff,
    Latency,
    Turns,
    Waiting,
    analyse_turns,
    handoff,
    latency,
    private_memcached,
    request_count,
    server_stats,
    waiting_load,
)

__all__ = ["main", "REQUEST_COUNTERS", "FileLatency", "Latency", "Turns", "Handoff", "Waiting", "Report",
           "private_memcached", "server_stats", "request_count", "latency", "analyse_turns", "handoff", "waiting_load",
           "print_latency", "print_handoff", "print_waiting", "print_report", "missed_goals"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2) instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        from .cliargs import EXIT_USAGE, CommandError

        raise CommandError("%s (see memcachedlock bench --help)" % message, EXIT_USAGE)


def _one_server(text: str) -> str:
    """The ``host:port`` of ``--servers``: one TCP server, checked like MEMCACHEDLOCK_SERVERS."""
    from ..config import parse_servers
    from ..errors import ConfigurationError

    servers = parse_servers(text)
    if len(servers) != 1 or servers[0].path is not None:
        raise ConfigurationError("--servers %r: bench measures one TCP server, host:port" % text)
    return str(servers[0])


def _answering(address: str) -> None:
    """BackendUnavailable (one line) unless memcached at ``address`` answers ``version``."""
    from ..backends.memcached import server_command
    from ..config import parse_server
    from ..errors import BackendUnavailable

    try:
        answer = server_command(parse_server(address), b"version", timeout=2.0)
    except OSError as exc:
        raise BackendUnavailable("memcached %s does not answer: %s" % (address, exc or type(exc).__name__)) from exc
    if not answer.startswith("VERSION "):
        raise BackendUnavailable("%s does not answer like memcached: %r" % (address, answer[:60]))


def _refuse_tls(address: str) -> None:
    """ConfigurationError if TLS is on: bench compares the lock with a raw plain client, on a plain memcached.

    Only the TLS variable is looked at: bench uses no other setting, so another bad one must not stop it.
    """
    from ..config import is_unset
    from ..errors import ConfigurationError
    from ..tls import CA_VARIABLE

    if not is_unset(os.environ.get(CA_VARIABLE)):
        raise ConfigurationError(
            "--servers %s: bench measures a plain memcached and TLS is on (MEMCACHEDLOCK_TLS_CA); "
            "benchmarks/tls.py measures the lock over TLS" % address)


def main(argv: Sequence[str] | None = None) -> int:
    """``memcachedlock bench [latency|handoff|waiting|all]``: print the tables.

    Returns 0, or with ``--check`` 1 if a goal is missed.  Raises the
    command's one-line errors (CommandError, ConfigurationError,
    BackendUnavailable), which ``cli.main`` prints with their exit codes.
    """
    from pymemcache.exceptions import MemcacheError

    from ..errors import BackendUnavailable
    from .cliargs import _positive_int, _seconds_arg

    parser = _Parser(prog="memcachedlock bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=("latency", "handoff", "waiting", "all"))
    parser.add_argument("--servers", help="host:port of a memcached to use (default: start a private one)")
    parser.add_argument("-n", type=_positive_int, default=2000, help="pairs per latency round (default %(default)s)")
    parser.add_argument("--rounds", type=_positive_int, default=5, help="latency rounds (default %(default)s)")
    parser.add_argument("--duration", type=_seconds_arg, default=0.4, help="seconds of handoff turns")
    parser.add_argument("--hold", type=_seconds_arg, default=0.005, help="seconds a worker holds the lock")
    parser.add_argument("--wait", type=_seconds_arg, default=2.0, help="seconds the waiters wait")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a goal is missed (latency ratio <= 1.6, handoff p50 <= 2 ms between "
                             "processes and <= 0.5 ms between threads, alternation >= 90%%)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    address = _one_server(args.servers) if args.servers is not None else None
    if address is not None:
        _refuse_tls(address)

    with contextlib.ExitStack() as stack:
        if address is None:
            try:
                address = stack.enter_context(private_memcached())
            except RuntimeError as exc:
                raise BackendUnavailable(str(exc)) from None
        _answering(address)
        report: Report = {}
        try:
            if args.what in ("latency", "all"):
                report["latency"] = latency(address, args.n, args.rounds)
            if args.what in ("handoff", "all"):
                report["handoff"] = [
                    handoff(address, "process", "raw", args.duration, args.hold),
                    handoff(address, "process", "ours", args.duration, args.hold),
                    handoff(address, "thread", "ours", args.duration, args.hold),
                ]
            if args.what in ("waiting", "all"):
                report["waiting"] = [
                    waiting_load(address, 4, 1, args.wait),
                    waiting_load(address, 4, 12, args.wait),
                ]
        except (OSError, MemcacheError) as exc:
            raise BackendUnavailable("memcached %s failed during the run: %s" % (address, exc)) from exc
        missed = missed_goals(report)
        print_report(report, missed, args.json, args.check)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
