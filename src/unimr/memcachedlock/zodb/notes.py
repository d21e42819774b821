"""The note beside a zlock: the last commits made under it, per storage, read so that absence proves nothing.

Why: a transaction that takes a zlock must know whether a commit made under
the lock came after its view began (then its view is stale), and an
optimistic commit must know whether a policy-``always`` holder *replaced*
objects after its view began (then its changes would land in objects nobody
reaches any more).  zlock keeps that history in a note in the lock store.

But a store forgets: memcached evicts or restarts, a note file is removed,
and a missing note, or a missing entry, reads exactly like one never
written.  So the note is read by one rule: **an entry tells what happened
since it was written, and nothing else.**  Memcached and the lock directory
lose whole notes, never single entries (zlock itself drops entries only
when it bounds a note, never the newest), and every commit under the lock
writes its entries into the note that exists when it commits.  So an entry
written at tid T proves the note item has existed since T and holds every
later commit; where no entry reaches back to a transaction's view, the
answer is :data:`UNKNOWN`, and zlock then asks the storage instead (one
round trip: did anything commit since the view began?).

Entries, ``name=tid`` (tid in hex), one per name, after ``NOTE_MAGIC``:

``<identity>``
    the last commit under the lock that touched that storage;
``exclusive:<identity>``
    the last such commit made with policy ``always`` (it may have
    replaced objects: ``manage_catalogClear``, ``refreshCatalog``...);
``since:<identity>``
    where this note's record of that storage begins: every commit under the
    lock touching it with a tid at or above this one is in the note (the
    first commit it recorded, or, for a storage a locked commit did not
    touch, just above that storage's last tid then: nothing can commit
    under a held lock).

Storage identities are computed by zlock (``storage_identity``); a storage
local to one process has one starting with :func:`local_identity_prefix`.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import quote, unquote

logger = logging.getLogger(__name__)

NOTE_MAGIC = b"zlock2"
#: Prefix of the entry of a storage's last commit made with policy ``always``.
EXCLUSIVE = "exclusive:"
#: Prefix of the entry where the note's record of a storage begins.
SINCE = "since:"
#: The most entries a note keeps (up to three per storage).
MAX_NOTE_ENTRIES = 32

#: What a note says about commits after a view began.
FRESH, STALE, UNKNOWN = "fresh", "stale", "unknown"

_HOST = socket.gethostname()


def local_identity_prefix() -> str:
    """The start of this process's identities of storages local to it."""
    return "local:%s:%d:" % (_HOST, os.getpid())


def identity_of(name: str) -> str:
    """The storage identity an entry name is about."""
    for prefix in (EXCLUSIVE, SINCE):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def encode_entries(tids: dict[str, bytes]) -> bytes:
    """Note entries: ``name=tid`` in the dict's order, as appended by an optimistic commit."""
    return b" ".join(quote(name, safe="").encode("ascii") + b"=" + tid.hex().encode("ascii")
                     for name, tid in tids.items())


def encode_note(tids: dict[str, bytes]) -> bytes:
    """A whole note."""
    return NOTE_MAGIC + b" " + encode_entries(tids) if tids else NOTE_MAGIC


def _keep(name: str, old: bytes, new: bytes) -> bytes:
    """Of two tids given for one name, the one the note means: the first for ``since:``, else the last."""
    return min(old, new) if name.startswith(SINCE) else max(old, new)


def decode_note(value: bytes | None) -> dict[str, bytes]:
    """Parse a note; an absent or foreign one has no entries (which proves nothing: see the module docstring).

    Optimistic commits append their entries (to an empty note if there was
    none, which therefore starts with a space), so a name may occur several
    times.  Names come in the order they were last written.
    """
    if not value:
        return {}
    parts = value.split(b" ")
    if parts[0] not in (NOTE_MAGIC, b""):
        logger.debug("ignoring a lock note not written by zlock: %r", value[:60])
        return {}
    latest: dict[bytes, bytes] = {}
    for part in parts[1:]:
        name, sep, tid_hex = part.partition(b"=")
        if sep and len(tid_hex) == 16:
            previous = latest.pop(name, None)  # same-length lowercase hex orders like the tids
            latest[name] = tid_hex if previous is None else _keep(unquote(name.decode("ascii", "replace")),
                                                                   previous, tid_hex)
        else:
            logger.debug("ignoring a malformed part of a lock note: %r", part[:60])
    tids: dict[str, bytes] = {}
    for name, tid_hex in latest.items():
        try:
            tids[unquote(name.decode("ascii"))] = bytes.fromhex(tid_hex.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            logger.debug("ignoring a malformed part of a lock note: %r", name[:60])
    return tids


def with_since(note: dict[str, bytes], tids: dict[str, bytes],
               untouched: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """``tids`` (a commit's entries) plus a ``since:`` entry for each storage whose record begins now.

    ``untouched``: the storages a locked commit's transaction used without
    changing, each with the tid its record can begin at.
    """
    fresh = dict(tids)
    for name, tid in tids.items():
        if name == identity_of(name) and SINCE + name not in note:
            fresh[SINCE + name] = tid
    for identity, tid in (untouched or {}).items():
        if identity not in tids and SINCE + identity not in note:
            fresh[SINCE + identity] = tid
    return fresh


def merge_note(note: dict[str, bytes], fresh: dict[str, bytes]) -> dict[str, bytes]:
    """The note after a commit: ``fresh`` entries last, the others before them, at most MAX_NOTE_ENTRIES.

    Storage identities come and go (a temporary storage's includes its
    process id, a ZEO server may move), so the note is bounded.  Over the
    bound, whole storages go -- every entry about one, so that what is left
    still tells the truth: those of other processes' local storages first
    (only their own process compares them, and it writes them again with
    its next commit), then those written longest ago.  A storage dropped
    only makes later readers ask the storage itself.
    """
    merged = {name: tid for name, tid in note.items() if name not in fresh}
    for name, tid in fresh.items():
        merged[name] = _keep(name, note[name], tid) if name in note else tid
    if len(merged) > MAX_NOTE_ENTRIES:
        mine = local_identity_prefix()
        current = {identity_of(name) for name in fresh}
        older = list(dict.fromkeys(identity_of(name) for name in merged if identity_of(name) not in current))
        foreign = [identity for identity in older if identity.startswith("local:") and not identity.startswith(mine)]
        for identity in foreign + [identity for identity in older if identity not in foreign]:
            if len(merged) <= MAX_NOTE_ENTRIES:
                break
            for name in (identity, EXCLUSIVE + identity, SINCE + identity):
                merged.pop(name, None)
    return merged


def _reaches_back(note: dict[str, bytes], identity: str, view: bytes) -> bool:
    """True if the note's record of ``identity`` covers every commit at ``view`` or later.

    A commit's entry was written after the commit: the note has held every
    later commit since.  A ``since:`` entry says where the record begins.
    """
    since = note.get(SINCE + identity)
    return (since is not None and since <= view) or any(
        tid is not None and tid < view for tid in (note.get(identity), note.get(EXCLUSIVE + identity)))


def commits_since(note: dict[str, bytes], identity: str, view: bytes) -> tuple[str, bytes | None]:
    """Did a commit under the lock touch ``identity`` at ``view`` or later?

    (FRESH | STALE | UNKNOWN, the newest such tid if STALE); ``view`` is the
    tid a snapshot reads before (``MVCCAdapterInstance._start``).
    """
    last = note.get(identity)
    if last is not None and last >= view:
        return STALE, last
    if _reaches_back(note, identity, view):
        return FRESH, None
    return UNKNOWN, None


def exclusive_commits_since(note: dict[str, bytes], identity: str, view: bytes) -> tuple[str, bytes | None]:
    """The same for commits made with policy ``always`` (those that may replace objects)."""
    last = note.get(EXCLUSIVE + identity)
    if last is not None and last >= view:
        return STALE, last
    if _reaches_back(note, identity, view):
        return FRESH, None
    return UNKNOWN, None


__all__ = ["NOTE_MAGIC", "EXCLUSIVE", "SINCE", "MAX_NOTE_ENTRIES", "FRESH", "STALE", "UNKNOWN",
           "local_identity_prefix", "identity_of", "encode_entries", "encode_note", "decode_note", "with_since",
           "merge_note", "commits_since", "exclusive_commits_since"]
