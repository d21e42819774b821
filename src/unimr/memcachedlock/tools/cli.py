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
import json
import logging
import os
import re
import socket
import sys
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, TypeAlias, TypedDict
from urllib.parse import unquote

from ..backends.base import Backend
from ..backends.fallback import FallbackBackend
from ..backends.file import FileBackend
from ..backends.memcached import MemcachedBackend, server_command
from ..backends.pool import ClientPool
from ..backends.records import Holder, token_of
from ..config import BACKEND_KINDS, ServerAddress, Settings, is_unset
from ..errors import BackendUnavailable, ConfigurationError, MemcachedLockError
from ..keys import lock_name
from ..options import DEFAULT_TIMEOUT as DEFAULT_LEASE
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

if TYPE_CHECKING:
    from .zopeconf import InstanceConfig

logger = logging.getLogger(__name__)

#: Unicode categories escaped by ``clean``: controls, format (bidi overrides), separators, surrogates.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
#: What a lock name (``keys.lock_name``) is made of.
_NAME = re.compile(r"[A-Za-z0-9._~:@+=,!%#-]{0,200}")
#: The stores ``make_store`` builds; the commands tell them apart by class to reach a kind's own parts.
Store: TypeAlias = "MemcachedBackend | FileBackend | FallbackBackend"

# --------------------------------------------------------------------------- helpers


def clean(text: object) -> str:
    """``text`` safe for a terminal: control and format characters escaped as ``\\xNN``/``\\uNNNN``.

    The one sanitiser for everything the command prints that it read from a
    store or the environment.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        ("\\x%02x" % ord(c) if ord(c) < 0x100 else "\\u%04x" % ord(c) if ord(c) < 0x10000 else "\\U%08x" % ord(c))
        if unicodedata.category(c) in _UNSAFE_CATEGORIES else c
        for c in text
    )


class _CleanFormatter(logging.Formatter):
    """Log lines on the terminal go through ``clean`` too (they quote keys and holders)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(clean(line) for line in super().format(record).split("\n"))


def load_settings(args: argparse.Namespace) -> Settings:
    """The package's settings from the environment, with the command line's overrides.

    An override is parsed as its variable would be: ``--dir ""`` is no
    ``--dir`` (as ``MEMCACHEDLOCK_DIR=`` is no variable), ``--dir locks`` is
    refused as ``MEMCACHEDLOCK_DIR=locks`` is.
    """
    instance = instance_config(args)
    env = instance.environ(dict(os.environ)) if instance else dict(os.environ)
    for option, variable in (("servers", "MEMCACHEDLOCK_SERVERS"), ("backend", "MEMCACHEDLOCK_BACKEND"),
                             ("dir", "MEMCACHEDLOCK_DIR")):
        value: str | None = getattr(args, option, None)
        if value is not None and not is_unset(value):
            env[variable] = value
            if instance:
                instance.store.pop(_STORE_ATTRIBUTES.get(option, option), None)
    settings = Settings.from_environ(env)
    if instance and instance.store:
        unknown = sorted(set(instance.store) - set(_STORE_FIELDS))
        if unknown:
            raise ConfigurationError("<memcachedlock:store> in %s: unknown attribute %s"
                                     % (instance.store_file, ", ".join(unknown)))
        changes = {_STORE_FIELDS[name]: value for name, value in instance.store.items() if not is_unset(value)}
        try:
            settings = settings.replace(**changes)
        except ConfigurationError as exc:
            raise ConfigurationError("<memcachedlock:store> in %s: %s" % (instance.store_file, exc)) from None
    return settings


ZOPE_CONF_HELP = ("a Zope instance's zope.conf: take its <environment> and the <memcachedlock:store> of its "
                  "site ZCML over this shell's environment")
#: The store directive's attributes and the settings they give (``zope/directives.py``'s IStore).
_STORE_FIELDS = {"backend": "backend", "servers": "servers", "dir": "lock_dir", "connect_timeout": "connect_timeout",
                 "io_timeout": "io_timeout", "retry": "retry", "prefix": "prefix"}
#: Command-line options that override a store directive's attribute.
_STORE_ATTRIBUTES = {"servers": "servers", "backend": "backend", "dir": "dir"}


def instance_config(args: argparse.Namespace) -> InstanceConfig | None:
    """What ``--zope-conf`` says (read once per command), or None without it."""
    path: str | None = getattr(args, "zope_conf", None)
    if path is None or is_unset(path):
        return None
    cached: InstanceConfig | None = getattr(args, "_instance", None)
    if cached is None:
        from .zopeconf import read_zope_conf

        cached = args._instance = read_zope_conf(path)
    return cached


def describe_store(settings: Settings) -> str:
    """Which store the settings name, in words: what ``list`` says it looked at."""
    servers = "memcached %s" % ",".join(str(s) for s in settings.servers)
    where = {"memcached": servers, "file": "the lock directory %s" % settings.lock_dir,
             "fallback": "%s and the lock directory %s" % (servers, settings.lock_dir)}[settings.backend]
    return "%s (prefix %s)" % (where, settings.prefix)


def make_store(settings: Settings) -> Store:
    """The store the settings name, for inspection: its lock directory is checked, never created."""
    if settings.backend == "memcached":
        return MemcachedBackend.from_settings(settings)
    files = FileBackend(settings.lock_dir, create=False)
    if settings.backend == "file":
        return files
    return FallbackBackend(MemcachedBackend.from_settings(settings), files)


def describe_holder(holder: Holder) -> str:
    return clean("%s pid %d thread %s" % (holder.host, holder.pid, holder.thread_name or holder.thread))


def seconds(value: float | None) -> str:
    """A duration for a table: 850ms, 12.3s, 4m05s, 2h03m."""
    if value is None:
        return "-"
    if value < 1:
        return "%.0fms" % (value * 1000) if value >= 0.001 else "%.2fms" % (value * 1000)
    if value < 60:
        return "%.1fs" % value
    if value < 3600:
        return "%dm%02ds" % divmod(int(value), 60)
    return "%dh%02dm" % divmod(int(value) // 60, 60)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest (cleaned) cell; ``right`` lists right-aligned columns."""
    rows = [list(map(clean, header))] + [list(map(clean, row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(data: Mapping[str, object] | Sequence[Mapping[str, object]], out: IO[str]) -> None:
    """JSON with ASCII escapes: a control character read from a store cannot reach the terminal raw."""
    json.dump(data, out, indent=2, sort_keys=True, ensure_ascii=True)
    out.write("\n")


def key_of(name: str) -> str | None:
    """The key a lock name stands for, if it can be shown as text and maps back to ``name``; else None."""
    try:
        key = unquote(name, errors="strict")
    except UnicodeDecodeError:
        return None
    if not key.isprintable() or lock_name(key) != name:
        return None
    return key


def shown_key(name: str) -> str:
    """How ``list`` and ``show`` print a lock: its key, or ``--name NAME`` when the key is not text."""
    key = key_of(name)
    return key if key is not None else "--name %s" % name


def holder_json(holder: Holder) -> dict[str, str | int | float | None]:
    return dict(holder.as_dict(), key=key_of(holder.name))


def target_name(args: argparse.Namespace) -> str:
    """The lock name the command line means: ``lock_name(KEY)``, or NAME given with ``--name``."""
    name: str | None = args.name
    if name:
        if args.key is not None:
            raise CommandError("give either KEY or --name NAME, not both", EXIT_USAGE)
        if not _NAME.fullmatch(name):
            raise CommandError("--name %s is not a lock name as `list` shows it" % clean(name), EXIT_USAGE)
        return name
    if args.key is None:
        raise CommandError("give the KEY (or --name NAME as `list` shows it)", EXIT_USAGE)
    return lock_name(args.key)


def find_holder(store: Store, name: str) -> Holder | None:
    """``name``'s holder in ``store``; BackendUnavailable when the answer cannot be known.

    With the fallback store a lock held in the lock directory (taken during an
    outage) is found even while memcached is down; otherwise an unreachable
    memcached means "unknown", not "not locked".
    """
    if not isinstance(store, FallbackBackend):
        return store.holder(name)
    try:
        found = store.primary.holder(name)
    except BackendUnavailable as exc:
        found = store.secondary.holder(name)
        if found is None:
            raise
        print("memcachedlock: warning: %s; showing the lock directory only" % clean(exc), file=sys.stderr)
    return found if found is not None else store.secondary.holder(name)


def break_held(store: Store, name: str, token: str) -> bool:
    """Remove ``name``'s lock only while ``token``'s holder has it (compare-and-delete, every store)."""
    if isinstance(store, FileBackend):
        return store.break_lock(name, token=token)
    if isinstance(store, FallbackBackend):
        try:
            broken = _break_in_memcached(store.primary, name, token)
        except BackendUnavailable:
            broken = False
        return store.secondary.break_lock(name, token=token) or broken
    return _break_in_memcached(store, name, token)


def _break_in_memcached(store: MemcachedBackend, name: str, token: str) -> bool:
    """``gets`` then ``cas`` with exptime -1: removed only if the item still carries ``token``."""
    server = store.server_for(name)
    key = store.prefix + name
    stored, cas = server.call(ClientPool.gets, key)
    if stored is None or token_of(stored) != token:
        return False
    return bool(server.call(ClientPool.cas, key, stored, cas, expire=-1, noreply=False))


def holder_row(holder: Holder) -> list[str]:
    return [shown_key(holder.name), describe_holder(holder), seconds(holder.age), seconds(holder.ttl_left),
            holder.backend]


# --------------------------------------------------------------------------- list / show / break


def cmd_list(args: argparse.Namespace, out: IO[str]) -> int:
    settings = load_settings(args)
    store = make_store(settings)
    holders: list[Holder] = []
    warnings: list[str] = []
    parts: list[Backend] = [store.primary, store.secondary] if isinstance(store, FallbackBackend) else [store]
    for part in parts:
        try:
            holders.extend(part.list_locks())
        except BackendUnavailable as exc:
            if not isinstance(store, FallbackBackend):
                raise
            warnings.append("%s; showing the lock directory only" % exc)
    holders.sort(key=lambda h: h.acquired)
    for warning in warnings:
        print("memcachedlock: warning: %s" % clean(warning), file=sys.stderr)
    if args.json:
        print_json([holder_json(h) for h in holders], out)
    elif holders:
        out.write(table(("KEY", "HOLDER", "AGE", "TTL LEFT", "STORE"),
                        [holder_row(h) for h in holders], right=(2, 3)) + "\n")
    else:
        out.write("no locks held in %s\n" % clean(describe_store(settings)))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    store = make_store(load_settings(args))
    name = target_name(args)
    holder = find_holder(store, name)
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
    store = make_store(load_settings(args))
    name = target_name(args)
    shown = clean(shown_key(name))
    holder = find_holder(store, name)
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
    broken = break_held(store, name, holder.token)
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


# --------------------------------------------------------------------------- check


def _lines(address: ServerAddress, command: bytes, timeout: float) -> list[str]:
    return server_command(address, command, timeout).splitlines()


def _stats(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            found[parts[1]] = parts[2]
    return found


class _Reachability(TypedDict):
    """Whether ``check`` reached a server, and the problems and warnings it found."""

    server: str
    reachable: bool
    problems: list[str]
    warnings: list[str]


class ServerReport(_Reachability, total=False):
    """What ``check`` says about one memcached server: with the figures of a reachable one."""

    version: str
    evictions: int
    limit_maxbytes: int
    temporary_ttl: int
    evictions_enabled: bool
    lru_crawler: bool
    can_evict_locks: bool


class _Problems(TypedDict):
    problems: list[str]
    servers: list[ServerReport]


class CheckResult(_Problems, total=False):
    """What ``check`` found, as printed with ``--json``."""

    ok: bool
    configuration: dict[str, str | float | list[str] | None]
    lock_dir_ok: bool


def check_server(address: ServerAddress, settings: Settings) -> ServerReport:
    """Reachability, version, evictions and eviction settings of one server, with problems found."""
    timeout = settings.connect_timeout + settings.io_timeout
    report: ServerReport = {"server": str(address), "reachable": False, "problems": [], "warnings": []}
    try:
        version = _lines(address, b"version", timeout)
        stats = _stats(_lines(address, b"stats", timeout))
        server_settings = _stats(_lines(address, b"stats settings", timeout))
    except OSError as exc:
        report["problems"].append(
            "unreachable (%s): locks fall back to this host's lock directory or fail; "
            "start memcached there or fix MEMCACHEDLOCK_SERVERS" % (exc or type(exc).__name__)
        )
        return report
    report["reachable"] = True
    report["version"] = version[0][8:] if version and version[0].startswith("VERSION ") else "?"
    report["evictions"] = int(stats.get("evictions", 0))
    report["limit_maxbytes"] = int(stats.get("limit_maxbytes", 0))
    # ``stats settings`` shows temporary_ttl 61 by default, but it only applies
    # when the temporary LRU is on (temp_lru yes, which -o temporary_ttl=N sets).
    temp_lru = server_settings.get("temp_lru", "no") in ("yes", "true", "1")
    report["temporary_ttl"] = int(server_settings.get("temporary_ttl", 0) or 0) if temp_lru else 0
    report["evictions_enabled"] = server_settings.get("evictions", "on") != "off"
    # -X shows as dump_enabled no (lru_crawler stays yes): metadump is refused.
    report["lru_crawler"] = (server_settings.get("lru_crawler", "yes") == "yes"
                             and server_settings.get("dump_enabled", "yes") == "yes")
    can_evict = report["evictions_enabled"] and report["temporary_ttl"] == 0
    report["can_evict_locks"] = can_evict
    fix = ("give the locks a memcached of their own, or start this one with -o temporary_ttl=N "
           "(N at least your longest lock timeout; items with a TTL up to N are then never evicted)")
    if can_evict and report["evictions"] > 0:
        report["problems"].append(
            "has evicted %d items and may evict live locks (no temporary_ttl): %s" % (report["evictions"], fix))
    elif can_evict:
        report["warnings"].append("no eviction yet, but memory pressure would evict live locks: " + fix)
    elif report["evictions_enabled"] and report["temporary_ttl"] < DEFAULT_LEASE:
        report["warnings"].append(
            "temporary_ttl %d is below the default lock timeout (%gs): longer locks can be evicted"
            % (report["temporary_ttl"], DEFAULT_LEASE))
    if not report["lru_crawler"]:
        report["warnings"].append("the LRU crawler or metadump is off (-X): `memcachedlock list` cannot see "
                                  "its locks (show, break and the locks themselves work)")
    return report


def _check_one_server(address: ServerAddress, settings: Settings, result: CheckResult, lines: list[str]) -> None:
    """``check`` of one memcached server: its report into ``result``, its lines into ``lines``."""
    report = check_server(address, settings)
    result["servers"].append(report)
    if report["reachable"]:
        line = "memcached %s: reachable, version %s, %d MB, %d evictions, temporary_ttl %s" % (
            address, report["version"], report["limit_maxbytes"] // (1024 * 1024),
            report["evictions"], report["temporary_ttl"] or "off")
        if not report["evictions_enabled"]:
            line += ", evictions off (-M)"
    else:
        line = "memcached %s: UNREACHABLE" % address
    lines.append(line)
    for problem in report["problems"]:
        lines.append("  PROBLEM: %s" % problem)
        result["problems"].append("memcached %s: %s" % (address, problem))
    for warning in report["warnings"]:
        lines.append("  warning: %s" % warning)


def cmd_check(args: argparse.Namespace, out: IO[str]) -> int:
    from ..metrics import metrics_settings

    result: CheckResult = {"problems": [], "servers": []}
    try:
        settings = load_settings(args)
        instance = instance_config(args)
        metrics_dir, metrics_interval = metrics_settings(instance.environ(dict(os.environ)) if instance else None)
    except ConfigurationError as exc:
        result["problems"].append("configuration: %s" % exc)
        result["ok"] = False
        if args.json:
            print_json(result, out)
        else:
            out.write("configuration: PROBLEM: %s\n" % clean(exc))
        return EXIT_USAGE
    result["configuration"] = {
        "backend": settings.backend, "servers": [str(s) for s in settings.servers],
        "lock_dir": settings.lock_dir, "prefix": settings.prefix,
        "connect_timeout": settings.connect_timeout, "io_timeout": settings.io_timeout,
        "metrics_dir": metrics_dir or None, "metrics_interval": metrics_interval,
    }
    lines = ["configuration: ok (backend %s, servers %s, prefix %s)" % (
        settings.backend, ",".join(str(s) for s in settings.servers), settings.prefix)]
    if instance:
        lines.append("settings from %s" % instance.sources())
    if settings.backend in ("memcached", "fallback"):
        for address in settings.servers:
            _check_one_server(address, settings, result, lines)
    if settings.backend in ("file", "fallback"):
        from ..backends.lockdir import prepare_lock_dir

        try:
            state = "private"
            if not os.path.lexists(prepare_lock_dir(settings.lock_dir, create=False)):
                _check_creatable(settings.lock_dir)
                state = "not there yet (created with mode 0700 on first use)"
            lines.append("lock directory %s: %s" % (settings.lock_dir, state))
            result["lock_dir_ok"] = True
        except ConfigurationError as exc:
            lines.append("lock directory: PROBLEM: %s" % exc)
            result["problems"].append(str(exc))
            result["lock_dir_ok"] = False
    if metrics_dir:
        lines.append("metrics: snapshots to %s every %gs" % (metrics_dir, metrics_interval))
    result["ok"] = not result["problems"]
    if args.json:
        print_json(result, out)
    else:
        lines.append("ok" if result["ok"] else "%d problem(s) found" % len(result["problems"]))
        out.write("\n".join(clean(line) for line in lines) + "\n")
    return EXIT_OK if result["ok"] else EXIT_NO


def _check_creatable(path: str) -> None:
    """ConfigurationError unless the nearest existing ancestor of ``path`` is a writable directory."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError("cannot create lock directory %r (MEMCACHEDLOCK_DIR): %r is not a writable "
                                 "directory" % (path, parent))


# --------------------------------------------------------------------------- stats


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


if __name__ == "__main__":
    sys.exit(main())
