"""How the ``memcachedlock`` command prints: escaped text, tables, durations, JSON, and lock keys.

Everything read from a store or the environment (host and thread names,
keys, prefixes, tokens, error messages) is printed through :func:`clean`,
which escapes control and format characters, so a planted value cannot drive
the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import IO
from urllib.parse import unquote

from ..backends.records import Holder
from ..keys import lock_name
from .cliargs import EXIT_USAGE, CommandError

#: Unicode categories escaped by ``clean``: controls, format (bidi overrides), separators, surrogates.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
#: What a lock name (``keys.lock_name``) is made of.
_NAME = re.compile(r"[A-Za-z0-9._~:@+=,!%#-]{0,200}")


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


def holder_row(holder: Holder) -> list[str]:
    return [shown_key(holder.name), describe_holder(holder), seconds(holder.age), seconds(holder.ttl_left),
            holder.backend]
