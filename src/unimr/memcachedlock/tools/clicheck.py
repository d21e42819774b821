"""``memcachedlock check``: the configuration, each memcached server's health, the lock directory."""

from __future__ import annotations

import argparse
import os
import ssl
from typing import IO, TypedDict

from ..backends.memcachedserver import server_command
from ..config import ServerAddress, Settings
from ..errors import ConfigurationError
from ..options import DEFAULT_TIMEOUT as DEFAULT_LEASE
from ..tls import label
from .cliargs import EXIT_NO, EXIT_OK, EXIT_USAGE
from .cliformat import clean, print_json
from .clisettings import instance_config, load_settings


def _lines(address: ServerAddress, command: bytes, timeout: float, tls_context: ssl.SSLContext | None) -> list[str]:
    return server_command(address, command, timeout, tls_context).splitlines()


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
    tls = settings.tls_context
    report: ServerReport = {"server": str(address), "reachable": False, "problems": [], "warnings": []}
    try:
        version = _lines(address, b"version", timeout, tls)
        stats = _stats(_lines(address, b"stats", timeout, tls))
        server_settings = _stats(_lines(address, b"stats settings", timeout, tls))
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
    named = label(address, settings.tls_context)
    if report["reachable"]:
        line = "memcached %s: reachable, version %s, %d MB, %d evictions, temporary_ttl %s" % (
            named, report["version"], report["limit_maxbytes"] // (1024 * 1024),
            report["evictions"], report["temporary_ttl"] or "off")
        if not report["evictions_enabled"]:
            line += ", evictions off (-M)"
    else:
        line = "memcached %s: UNREACHABLE" % named
    lines.append(line)
    for problem in report["problems"]:
        lines.append("  PROBLEM: %s" % problem)
        result["problems"].append("memcached %s: %s" % (named, problem))
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
        "tls_ca": settings.tls_ca or None, "tls_cert": settings.tls_cert or None,
    }
    lines = ["configuration: ok (backend %s, servers %s%s, prefix %s)" % (
        settings.backend, ",".join(str(s) for s in settings.servers), " (TLS)" if settings.tls_ca else "",
        settings.prefix)]
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
