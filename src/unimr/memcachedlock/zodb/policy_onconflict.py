"""zlock policy ``on-conflict``: optimistic, through the key's commit gate; the retry after conflicts locks.

The function runs unlocked, and a before-commit hook passes the key's
*commit gate* (``interfaces.ICommitGate``): optimistic commits go in
together but never while the lock is held, and a new holder waits for
those that passed before it, so no commit of the key's objects comes
between a holder's view and its commit.  Two store round trips: into the
gate (reading the note: exclusive writers, see
``_check_exclusive_commits``) and out of it (appending the commit's tid).
Stores without a gate take the lock at commit instead.  ZODB's conflict
resolution decides as usual.  After ``conflicts`` ConflictErrors in a row
(default 1; 3 makes Zope's fourth and last try the locked one) the key is
*marked* for this thread, and the thread's next transaction takes the lock
when it begins and brings its view forward (a server round trip and a poll
of invalidations) before it reads anything (:func:`claim_at_begin`).  That
retry holds the lock for its whole transaction, so no other commit of the
key's objects can come between its view and its commit.
"""

from __future__ import annotations

import logging
import time

from .. import metrics
from ..backends.base import CommitGate, CommitPass, poll
from ..errors import BackendUnavailable
from ..keys import shown
from ..registry import get_backend
from . import adaptive, notes, views
from .busy import LockBusy, conflicted
from .holding import TxnLocks, committed_tids, hold, locks_of
from .policy import Policy
from .private import Connection, Transaction
from .reservations import Reservation, ReservationKeeper, Streak, claim_at_begin_with, register_keeper
from .taking import Entry, Request, take

logger = logging.getLogger(__name__)

#: Seconds a conflict mark, or a run of ConflictErrors, waits for this thread's next transaction
#: to begin (Zope's back-off before its last try is at most 4 s).
MARK_FOR = 5.0
#: A note with this many entries is written whole again by the next optimistic commit.
COMPACT_AT = 8
#: Longest wait (seconds; at most the lock's ``wait``) of an optimistic commit at a gate whose lock is held;
#: after it, the commit takes the lock.
GATE_WAIT = 1.0


class OnConflict(Policy):
    """Policy ``on-conflict``."""

    name = "on-conflict"
    adopts_at_begin = True

    def lock_at_commit(self, txn: Transaction, name: str, request: Request, marked: Request | None,
                       reservation: Reservation | None) -> bool:
        """The first attempt runs now and commits through the gate; a marked or reserved retry locks now."""
        if marked is None and reservation is None:
            _lock_at_commit(txn, name, request)
            return True
        return False

    def fresh_views(self, entry: Entry, connections: list[Connection], name: str, adopted: bool
                    ) -> tuple[bool, str]:
        """Fresh if adopted at begin (the view was brought forward then) or nothing committed since."""
        return adopted or views.fresh_after_ping(connections), ""

    def count_conflict(self, entry: Entry, txn: Transaction) -> None:
        """Count a ConflictError; after enough in a row the retry locks at begin."""
        if conflicted():
            _mark(entry.lock.name, entry.request, txn)


ON_CONFLICT = OnConflict()


def _mark(name: str, request: Request, txn: Transaction) -> None:
    """Count ``txn``'s ConflictError for lock ``name``; after ``request.conflicts`` in a row, mark it.

    A mark lets this thread's next transaction take the lock when it begins.
    The run of ConflictErrors lasts while each of the thread's next
    transactions begins within MARK_FOR seconds of the last ConflictError
    and fails with one too (a try may run as long as it needs); once it is
    long enough, every further ConflictError marks the key again.
    """
    keeper = register_keeper()
    streak = keeper.streaks.setdefault(name, Streak())
    if streak.counted_in(txn):
        return  # counted already: an after-commit and an after-abort hook both see a failed commit
    _learn(request, name, met=True)
    now = time.monotonic()
    streak.add(txn, now + MARK_FOR)
    if streak.count < request.conflicts:
        logger.debug("ConflictError %d of %d under optimistic zlock %s: the retry runs optimistically",
                     streak.count, request.conflicts, name)
        return
    request.until = now + MARK_FOR
    keeper.marks[name] = request
    logger.debug("ConflictError under optimistic zlock %s: the retry takes the lock at begin", name)


def _learn(request: Request, name: str, met: bool) -> None:
    """Policy adaptive: an optimistic transaction on lock ``name`` ended, having ``met`` a writer or not."""
    if request.adaptive:
        adaptive.record(name, locked=False, met=met)


def claim_at_begin(txn: Transaction, keeper: ReservationKeeper) -> None:
    """Adopt reservations and take marked locks for the transaction that begins, then refresh its view."""
    if not keeper.reservations and not keeper.marks:
        return
    taken = False
    for name, reservation in list(keeper.reservations.items()):
        if reservation.origin is txn or not reservation.entry.policy.adopts_at_begin:
            continue  # policy always adopts at the call, after the caught-up begin
        keeper.claim(name)
        entry = reservation.adopt()
        if entry is not None:
            hold(txn, name, entry)
            taken = True
    now = time.monotonic()
    marks, keeper.marks = keeper.marks, {}
    locks = locks_of(txn)
    for name in sorted(marks):
        request = marks[name]
        if request.until <= now or name in locks.held:
            continue
        try:
            entry = take(request, ON_CONFLICT)
        except LockBusy as exc:
            logger.debug("%s; the call takes it", exc)
            locks.marked[name] = request
            continue
        hold(txn, name, entry)
        taken = True
    if taken:
        views.refresh_view(txn)


claim_at_begin_with(claim_at_begin)


def _lock_at_commit(txn: Transaction, name: str, request: Request) -> None:
    """Policy on-conflict, first attempt: the function runs now; the lock is taken at commit."""
    pending = locks_of(txn).pending
    if name in pending:
        return
    if not pending:
        txn.addBeforeCommitHook(_take_pending, (txn,))
        txn.addAfterAbortHook(_after_abort_pending, (txn,))
    pending[name] = request
    register_keeper()


def _take_pending(txn: Transaction) -> None:
    """Before-commit hook: pass the commit gate of every lock used optimistically, or take the lock.

    Every commit that touches a key's objects thus either passes the key's
    gate while nobody holds its lock, or happens under the lock; a holder
    waits for the passes before it, so a retry holding the lock from its
    begin never sees a commit come between.  Stores without a gate, and
    keys whose lock is held, take the lock (in name order).  Runs after
    hooks added by earlier hooks too (CMFCore's indexing queue).
    """
    locks = locks_of(txn)
    for name in sorted(locks.pending):
        if name in locks.held or name in locks.passes or _pass_gate(txn, name, locks):
            continue
        entry = take(locks.pending[name], ON_CONFLICT)
        _check_exclusive_commits(entry, txn, name)
        hold(txn, name, entry)


def _pass_gate(txn: Transaction, name: str, locks: TxnLocks) -> bool:
    """Let ``txn`` commit through lock ``name``'s commit gate; False if it must take the lock.

    It must when the store has no gate or cannot be reached, when the lock
    is held, and when a policy-always holder committed after this
    transaction's view (the locked way then reserves the lock for the retry).
    """
    gate = get_backend().commit_gate
    if gate is None:
        return False
    try:
        entered, waited = _enter_gate(gate, name, min(GATE_WAIT, locks.pending[name].wait))
    except BackendUnavailable as exc:
        logger.debug("commit gate of %s unavailable (%s): taking the lock", name, exc)
        return False
    if entered is None:
        return False
    try:
        if views.commits_since_views(views.connections_of(txn), notes.decode_note(entered.note), exclusive=True):
            entered.leave()
            _learn(locks.pending[name], name, met=True)  # an exclusive writer's commit: it will be retried
            return False
        txn.addAfterCommitHook(_leave_gate, (entered, txn, name, waited))
        txn.addAfterAbortHook(_leave_gate, (False, entered, txn, name, waited))
        locks.passes[name] = entered
    except BaseException:
        entered.leave()
        raise
    return True


def _enter_gate(gate: CommitGate, name: str, wait: float) -> tuple[CommitPass | None, bool]:
    """Pass lock ``name``'s gate, waiting up to ``wait`` seconds while the lock is held: the pass (None if
    the lock stays held) and whether it waited (policy adaptive counts that as meeting another writer).

    Why wait rather than take the lock at once: the holder is a locked retry
    (or a writer of policy always), which holds the lock only while it runs.
    A commit that queued for the lock behind it would make the next one find
    the lock held too, and so on: every optimistic commit would then take
    turns under the lock, although its work was done on its own view and
    may conflict all the same (measured: 240 of 264 commits of 8 clients
    took the lock at commit; waiting, none did).
    """
    entered = gate.enter(name)
    waited = entered is None
    deadline = time.monotonic() + wait
    while entered is None and time.monotonic() < deadline:
        if not poll(lambda: get_backend().may_be_available(name), deadline - time.monotonic()):
            break
        entered = gate.enter(name)
    if entered is None:
        logger.debug("lock %s held for %.1fs while a commit waited at its gate: taking the lock", name, wait)
    return entered, waited


def _leave_gate(status: bool, entered: CommitPass, txn: Transaction, name: str, waited: bool) -> None:
    """After-commit and after-abort hook of a pass: record a commit in the note, count a ConflictError.

    A failed commit is counted here, where its ConflictError is known; the
    abort that follows sees the same one again, and the count is deduped.
    """
    try:
        entry = compact = None
        if status:
            _learn(locks_of(txn).pending[name], name, met=waited)
            tids = committed_tids(txn, ON_CONFLICT.exclusive)
            if tids:
                tids = notes.with_since(notes.decode_note(entered.note), tids)
            entry = notes.encode_entries(tids) if tids else None
            if entry and entered.note and entered.note.count(b" ") >= COMPACT_AT:
                def compact(note: bytes | None) -> bytes:
                    return notes.encode_note(notes.merge_note(notes.decode_note(note), tids))
        elif conflicted():
            _mark(name, locks_of(txn).pending[name], txn)
        entered.leave(entry, compact)
    except Exception:
        logger.exception("could not leave the commit gate of lock %s", name)
    finally:
        entered.leave()


def _check_exclusive_commits(entry: Entry, txn: Transaction, name: str) -> None:
    """LockBusy (lock reserved) if a policy-always holder committed after this transaction's view.

    Optimistic commits rely on ZODB's conflict resolution, which merges
    concurrent writes to the same BTrees.  A writer that holds the lock with
    policy ``always`` (``manage_catalogClear``, ``refreshCatalog``,
    ``addIndex``...) may *replace* those objects: a commit made on a view from
    before it would write into the replaced objects without any conflict, and
    be lost.  Such writers record their commit's tid in the lock's note, so
    the note read under the lock tells; the retry then runs on the new state,
    holding the reserved lock from its begin.
    """
    try:
        stale = views.commits_since_views(views.connections_of(txn), entry.note, exclusive=True)
        if not stale:
            return
        views.catch_up(stale)
        Reservation.reserve(entry, txn, name)
    except BaseException:
        Reservation.release(entry)
        raise
    metrics.record_busy(name)
    raise LockBusy(
        message="lock %s: a transaction holding it exclusively committed (tid %s) after this "
        "transaction's view began; retry (lock reserved)" % (shown(entry.request.key),
                                                            max(tid for _, tid in stale).hex()),
        key=entry.request.key, reserved=True,
    )


def _after_abort_pending(txn: Transaction) -> None:
    """Mark every lock used optimistically if the transaction failed with a ConflictError."""
    try:
        if conflicted():
            for name, request in locks_of(txn).pending.items():
                _mark(name, request, txn)
    except Exception:
        logger.exception("could not mark the optimistic zlocks for the retry")


__all__ = ["OnConflict", "ON_CONFLICT", "claim_at_begin", "MARK_FOR", "COMPACT_AT"]
