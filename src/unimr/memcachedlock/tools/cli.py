"""The ``memcachedlock`` command: demo, list, show, break, check, stats, bench.

Every subcommand prints a human-readable table by default and JSON with
``--json``; errors are one line on stderr, never a traceback.  Exit codes:

0  success (``check``: no problem found)
1  the answer is "no": a problem found (``check``), lock not held (``show``,
   ``break``), a lock that changed hands before ``break`` could remove it,
   no snapshots (``stats``), a goal missed (``bench --check``), an update
   lost or the demo could not run (``demo``), an unexpected error
2  bad usage or configuration (a bad option or ``MEMCACHEDLOCK_*`` value, a
   lock directory others can write, a refused ``break`` without ``--yes`` and
   without a terminal)
3  the lock store cannot be reached (``show`` and ``break`` cannot tell
   whether the lock is held; ``bench`` has no memcached to measure)
130 interrupted (Ctrl-C)

Keys: ``show`` and ``break`` take the key exactly as the application locks
it (``module.function:key`` for the decorators) and ``list`` shows it that
way; the argument is never decoded.  A key that cannot be shown as text (a
long key stored cut and hashed, control characters, non-UTF-8 bytes) is
listed as ``--name NAME``, the stored lock name, which ``show`` and ``break``
accept with ``--name``.

Everything read from a store or the environment (host and thread names,
keys, prefixes, tokens, error messages) is printed through :func:`clean`,
which escapes control and format characters, so a planted value cannot drive
the terminal.

``list``, ``show``, ``break`` and ``check`` read the same environment as the
package (``MEMCACHEDLOCK_SERVERS``, ``MEMCACHEDLOCK_BACKEND``,
``MEMCACHEDLOCK_DIR``, ``MEMCACHEDLOCK_PREFIX``...); ``--servers``,
``--backend`` and ``--dir`` override it for one call.  They follow the
variables' rule: an empty option is not given, a bad one is refused naming it.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

from ..backends.base import Backend
from ..backends.records import Holder
from ..config import BACKEND_KINDS
from ..errors import BackendUnavailable, ConfigurationError, MemcachedLockError
from ..registry import make_backend
from .cliargs import (
    EXIT_INTERRUPTED,
    EXIT_NO,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    _positive_int,
    _seconds_arg,
)
from .clicheck import cmd_check
from .cliformat import (
    _CleanFormatter,
    clean,
    describe_holder,
    holder_json,
    holder_row,
    key_of,
    print_json,
    seconds,
    shown_key,
    table,
    target_name,
)
from .clisettings import ZOPE_CONF_HELP, describe_store, load_settings
from .clistats import cmd_stats

logger = logging.getLogger(__name__)


def make_store(args: argparse.Namespace) -> Backend:
    """The store the command line names, for inspection: its lock directory is checked, never created."""
    return make_backend(load_settings(args), create=False)


def warn(message: str) -> None:
    """A store could read only part of itself: one warning line on stderr."""
    print("memcachedlock: warning: %s" % clean(message), file=sys.stderr)


# --------------------------------------------------------------------------- list / show / break


def cmd_list(args: argparse.Namespace, out: IO[str]) -> int:
    settings = load_settings(args)
    store = make_backend(settings, create=False)
    warnings: list[str] = []
    holders: list[Holder] = store.list_locks(warn=warnings.append)
    for warning in warnings:
        warn(warning)
    if args.json:
        print_json([holder_json(h) for h in holders], out)
    elif holders:
        out.write(table(("KEY", "HOLDER", "AGE", "TTL LEFT", "STORE"),
                        [holder_row(h) for h in holders], right=(2, 3)) + "\n")
    else:
        out.write("no locks held in %s\n" % clean(describe_store(settings)))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    store = make_store(args)
    name = target_name(args)
    holder = store.holder(name, warn=warn)
    if holder is None:
        passing = passing_commits(store, name)
        if args.json:
            print_json({"name": name, "key": key_of(name), "held": False, "passing": passing}, out)
        else:
            out.write("%s is not locked%s\n" % (
                clean(shown_key(name)), ", %d optimistic commit(s) passing" % passing if passing else ""))
        return EXIT_NO
    if args.json:
        print_json(dict(holder_json(holder), held=True), out)
        return EXIT_OK
    rows = [
        ("key", shown_key(holder.name)),
        ("holder", describe_holder(holder)),
        ("host", holder.host),
        ("pid", str(holder.pid)),
        ("thread", "%s (%d)" % (holder.thread_name, holder.thread)),
        ("acquired", "%s (%s ago)" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.acquired)),
                                      seconds(holder.age))),
        ("ttl left", seconds(holder.ttl_left)),
        ("store", holder.backend),
        ("token", holder.token),
    ]
    out.write("\n".join("%-9s %s" % (label, clean(value)) for label, value in rows) + "\n")
    return EXIT_OK


def passing_commits(store: Backend, name: str) -> int:
    """How many optimistic commits pass the lock's commit gate now (0 if the store has no gate)."""
    gate = store.commit_gate
    if gate is None:
        return 0
    try:
        return gate.passing(name)
    except BackendUnavailable:
        return 0


def cmd_break(args: argparse.Namespace, out: IO[str]) -> int:
    store = make_store(args)
    name = target_name(args)
    shown = clean(shown_key(name))
    holder = store.holder(name, warn=warn)
    if holder is None:
        out.write("%s is not locked: nothing to break\n" % shown)
        return EXIT_NO
    who = describe_holder(holder)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                "refusing to break %s (held by %s): no terminal to confirm on; add --yes" % (shown, who),
                EXIT_USAGE,
            )
        # The question goes to stderr so that it shows even when stdout is piped.
        sys.stderr.write("Break lock %s held by %s for %s (token %s)? [y/N] "
                         % (shown, who, seconds(holder.age), clean(holder.token)))
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if answer.strip().lower() not in ("y", "yes"):
            out.write("not broken\n")
            return EXIT_NO
    broken = store.break_lock(name, token=holder.token)
    if broken:
        logger.warning(
            "lock %s held by %s (token %s, for %s) broken by %s@%s pid %d",
            shown, who, holder.token, seconds(holder.age), _user(), socket.gethostname(), os.getpid(),
        )
    if args.json:
        print_json({"name": name, "key": key_of(name), "broken": bool(broken), "holder": holder_json(holder)}, out)
    elif broken:
        out.write("broke %s (was held by %s)\n" % (shown, who))
    else:
        out.write("%s was released or changed hands meanwhile: not broken\n" % shown)
    return EXIT_OK if broken else EXIT_NO


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "uid %d" % os.getuid()


# --------------------------------------------------------------------------- demo / bench


def cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    from .demo import DemoError, run_demo

    try:
        return run_demo(args.clients, args.writes, args.work, store=args.backend, timeout=args.timeout,
                        as_json=args.json, out=out)
    except DemoError as exc:
        raise CommandError(str(exc), EXIT_NO) from None


def cmd_bench(args: argparse.Namespace, out: IO[str]) -> int:
    try:
        from . import bench
    except ImportError as exc:
        raise CommandError("bench is not available: %s" % exc, EXIT_USAGE) from None
    main_function = getattr(bench, "main", None)
    if main_function is None:
        raise CommandError("bench is not available: unimr.memcachedlock.tools.bench has no main()", EXIT_USAGE)
    return int(main_function(list(args.bench_args)) or 0)


# --------------------------------------------------------------------------- parser


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of milliseconds" % text) from None
    if not 0 <= value <= 10000:
        raise argparse.ArgumentTypeError("%r must be between 0 and 10000 ms" % text)
    return value


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``memcachedlock demo``."""
    from .demo import DEFAULT_CLIENTS, DEFAULT_TIMEOUT, DEFAULT_WORK_MS, DEFAULT_WRITES, STORE_CHOICES

    demo = sub.add_parser(
        "demo", help="show what zlock saves: K ZEO clients on one hot object, no lock vs zlock",
        description="Start a ZEO server and K client processes that write one hot object with expensive "
                    "work, first without a lock, then with zlock, and print the conflicts and wasted work.",
    )
    demo.add_argument("--clients", type=_positive_int, default=DEFAULT_CLIENTS,
                      help="client processes (default %(default)s)")
    demo.add_argument("--writes", type=_positive_int, default=DEFAULT_WRITES,
                      help="commits per client (default %(default)s)")
    demo.add_argument("--work", type=_milliseconds, default=DEFAULT_WORK_MS,
                      help="CPU milliseconds of work per write (default %(default)s)")
    demo.add_argument("--backend", choices=STORE_CHOICES, default="auto",
                      help="lock store: auto (MEMCACHEDLOCK_SERVERS if reachable, else a private memcached "
                           "if installed, else files), memcached or file (default %(default)s)")
    demo.add_argument("--timeout", type=_seconds_arg, default=DEFAULT_TIMEOUT,
                      help="give up a run after this many seconds (default %(default)s)")
    demo.add_argument("--json", action="store_true", help="print JSON for scripts")
    demo.set_defaults(func=cmd_demo)


def _add_store_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                        store: argparse.ArgumentParser) -> None:
    """``list``, ``show``, ``break`` and ``check``: the commands that read a lock store."""
    listing = sub.add_parser("list", parents=[store], help="the locks held now",
                             description="List the locks held now: key, holder (host, pid, thread), age, "
                                         "TTL left and store.")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", parents=[store], help="one lock and its holder",
                          description="Show who holds one lock.  Exit 1 if nobody does, 3 if the store "
                                      "cannot be reached (then nobody can tell).")
    show.add_argument("key", nargs="?", help="the key as the application locks it, taken literally")
    show.add_argument("--name", help="the stored lock name instead, as `list` shows `--name NAME`")
    show.set_defaults(func=cmd_show)

    breaking = sub.add_parser("break", parents=[store], help="force-release a lock",
                              description="Remove a lock whoever holds it, after confirmation on the "
                                          "terminal unless --yes, and only while the holder shown still "
                                          "holds it (compare-and-delete on its token).  Logs who broke it.  "
                                          "Exit 1 if it was not held or changed hands, 3 if the store "
                                          "cannot be reached.")
    breaking.add_argument("key", nargs="?", help="the key as the application locks it, taken literally")
    breaking.add_argument("--name", help="the stored lock name instead, as `list` shows `--name NAME`")
    breaking.add_argument("-y", "--yes", action="store_true", help="do not ask")
    breaking.set_defaults(func=cmd_break)

    check = sub.add_parser("check", parents=[store], help="check the configuration and the servers",
                           description="Parse the configuration, then report each memcached server's "
                                       "reachability, version and whether it can evict live locks, with the "
                                       "fix.  Exit 1 on a problem, 2 on a bad configuration.")
    check.set_defaults(func=cmd_check)


def _add_stats_and_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stats`` and ``bench``."""
    stats = sub.add_parser("stats", help="merged lock metrics of all processes",
                           description="Read the metrics snapshots processes write into "
                                       "MEMCACHEDLOCK_METRICS_DIR and merge them per key prefix.")
    stats.add_argument("--dir", help="snapshot directory (default MEMCACHEDLOCK_METRICS_DIR)")
    stats.add_argument("--zope-conf", metavar="ZOPE_CONF", help=ZOPE_CONF_HELP)
    stats.add_argument("--max-age", type=_seconds_arg, help="ignore snapshots older than this many seconds")
    stats.add_argument("--json", action="store_true", help="print JSON for scripts")
    stats.add_argument("--top", type=_positive_int, default=10,
                       help="ConflictError rows shown per table (default 10)")
    stats.set_defaults(func=cmd_stats)

    bench = sub.add_parser("bench", add_help=False, help="latency and handoff against raw pymemcache",
                           description="Run the benchmarks (unimr.memcachedlock.tools.bench); "
                                       "`memcachedlock bench --help` shows their options.")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memcachedlock",
        description="Distributed locks for Zope/ZODB in memcached or flock'd files: "
                    "demo, inspection and checks.",
        epilog="Exit codes: 0 ok, 1 no/problem found, 2 usage or configuration error, "
               "3 lock store unreachable, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--servers", help="memcached servers, overrides MEMCACHEDLOCK_SERVERS "
                                         "(host:port,host:port)")
    store.add_argument("--backend", metavar="{%s}" % ",".join(BACKEND_KINDS),
                       help="lock store, overrides MEMCACHEDLOCK_BACKEND")
    store.add_argument("--dir", help="lock directory of the file store, overrides MEMCACHEDLOCK_DIR")
    store.add_argument("--zope-conf", metavar="ZOPE_CONF", help=ZOPE_CONF_HELP)
    store.add_argument("--json", action="store_true", help="print JSON for scripts")

    _add_demo(sub)
    _add_store_commands(sub, store)
    _add_stats_and_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    out = sys.stdout if out is None else out
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    position = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if position is not None and argv[position] == "bench":
        # argparse's REMAINDER swallows no leading option (bench --help): hand bench its arguments.
        args = parser.parse_args(argv[: position + 1])
        args.bench_args = argv[position + 1:]
    else:
        args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace, IO[str]], int] = args.func
    try:
        return func(args, out)
    except CommandError as exc:
        code, message = exc.code, str(exc)
    except ConfigurationError as exc:
        code, message = EXIT_USAGE, "configuration error: %s" % exc
    except BackendUnavailable as exc:
        code, message = EXIT_UNREACHABLE, "lock store unreachable: %s" % exc
    except MemcachedLockError as exc:
        code, message = EXIT_NO, str(exc)
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted"
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        code, message = EXIT_NO, "unexpected error %s: %s (run with -v for the traceback)" % (
            type(exc).__name__, exc)
    print("memcachedlock %s: %s" % (args.command, clean(message)), file=sys.stderr)
    return code


def setup_logging(verbose: bool) -> None:
    """Log lines through ``clean``; the stores' own warnings only with ``-v``.

    The command reports a store's failure itself, in one line with its exit
    code; an outage warning logged on the way would be a second, raw line.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CleanFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(lambda record: record.levelno >= logging.ERROR
                          or not record.name.startswith("unimr.memcachedlock.backends"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


__all__ = ["build_parser", "clean", "main", "setup_logging"]

if __name__ == "__main__":
    sys.exit(main())
