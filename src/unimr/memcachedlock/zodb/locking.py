"""Holding a zlock for the current transaction: taken now, at commit or when the transaction begins.

:func:`lock_for_transaction` (and the ``zlock`` decorator) choose the call's
policy once (:mod:`.policies`) and either arrange for the lock to be taken
at commit (``on-conflict``) or take (or adopt) it now; taking it, the
transaction's views are checked against the last commit made under the lock
and moved forward in place when that is safe (:mod:`.viewmove`), else the
lock is reserved and :class:`.LockBusy` asks for a retry.  :func:`lock_early`
takes, when a transaction begins, the locks its kind of request learned to
take then (:mod:`.early`).
"""

from __future__ import annotations

import logging
import time

from .. import metrics
from ..keys import lock_name, shown
from ..options import DEFAULT_CONFLICTS, DEFAULT_INTERVAL, DEFAULT_POLICY, DEFAULT_TIMEOUT, LockOptions
from . import adaptive, early, private, viewmove, views
from .busy import LockBusy
from .holding import hold, locks_of
from .policies import policy_named
from .policy import Policy
from .private import Connection, Transaction
from .reservations import Manager, Reservation, register_keeper, thread_keeper
from .taking import Entry, Request, take

try:
    import transaction as _transaction
    from transaction.interfaces import NoTransaction
except ImportError:  # zlock then behaves like rlock
    _transaction = None
    NoTransaction = None

try:
    from ZODB.Connection import Connection as _Connection
except ImportError:  # zlock then behaves like rlock
    _Connection = None

logger = logging.getLogger(__name__)


def current_transaction(manager: Manager | None = None) -> Transaction | None:
    """The current transaction of ``manager`` (default ``transaction.manager``), or None (none in explicit mode)."""
    if _transaction is None or _Connection is None:
        return None
    current: Manager = _transaction.manager if manager is None else manager
    try:
        return current.get()
    except NoTransaction:
        return None


def _check_view(entry: Entry, txn: Transaction, connections: list[Connection], name: str, key: str | bytes | int,
                policy: Policy, adopted: bool, started: float, used: dict[int, set[bytes] | None], move_view: bool
                ) -> bool:
    """Bring a view that predates the last commit under the lock forward (True), or raise LockBusy.

    False if the view was not stale.
    The view is moved forward in place (unless ``move_view`` is False) when
    the transaction cannot have seen the old state of anything the newer
    commits changed (``viewmove``; ``used``: what it used, known before
    the wait, if there was one); otherwise LockBusy keeps the lock reserved
    for the retry, which begins after that commit.
    """
    fresh, last = policy.fresh_views(entry, connections, name, adopted)
    if fresh:
        return False
    why = viewmove.refresh(connections, used) if move_view else "this lock does not move views (move_view=False)"
    if why is None:
        metrics.record_view_move(name)
        logger.debug("zlock %s: the view was moved forward in place past the last commit under the lock%s",
                     name, last)
        return True
    Reservation.reserve(entry, txn, name)
    metrics.record_busy(name)
    raise LockBusy(
        message="lock %s is busy: the transaction's view predates the last commit made under it%s and %s; "
        "retry (lock reserved, waited %.3fs%s)"
        % (shown(key), last, why, time.monotonic() - started, ", reservation adopted" if adopted else ""),
        key=key, reserved=True,
    )


def lock_for_transaction(key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT,
                         interval: float = DEFAULT_INTERVAL, wait: float | None = None,
                         policy: str = DEFAULT_POLICY, conflicts: int = DEFAULT_CONFLICTS,
                         move_view: bool = True, transaction_manager: Manager | None = None) -> bool:
    """Hold lock ``key`` for the current ZODB transaction (``policy`` always) or its commit.

    Returns True when the lock is held for the transaction (taken now, adopted
    from this thread's reservation, taken at begin, or already held by an
    earlier call) and the transaction's view contains the last commit made
    under it -- or, with policy ``on-conflict`` (or ``adaptive`` while the key
    runs optimistically) and no conflict mark, when the lock will be taken
    at commit.  Returns False, taking nothing, when there is no transaction
    with a ZODB connection (or ZODB is not installed).

    ``transaction_manager``: the manager whose current transaction holds the
    lock, for connections opened with a ``TransactionManager`` of their own
    (default ``transaction.manager``, the thread's, which Zope uses).

    ``conflicts`` (policy ``on-conflict`` only): after this many
    ConflictErrors in a row in this thread's transactions that used the
    key, the next transaction takes the lock when it begins.

    A view older than the last commit under the lock is moved forward in
    place if the transaction cannot have seen the old state of anything
    changed since (docs/zlock.rst; never with ``move_view`` False).  Raises
    :class:`LockBusy` (lock kept reserved) when it cannot be, and LockBusy
    (not reserved) when the lock could not be taken within ``min(wait,
    txn_wait())`` seconds.
    """
    options = LockOptions(timeout, interval, wait, policy, conflicts, move_view)
    return hold_for_transaction(key, options, transaction_manager)


def hold_for_transaction(key: str | bytes | int, options: LockOptions,
                         transaction_manager: Manager | None = None) -> bool:
    """:func:`lock_for_transaction` with its options checked."""
    chosen = policy_named(options.policy)
    name = lock_name(key)
    txn = current_transaction(transaction_manager)
    if txn is None:
        return False
    locks = locks_of(txn)
    if name in locks.held:
        return True
    connections = views.connections_of(txn)
    if not connections:
        return False
    # from the thread's next transaction on, views are marked where they begin
    register_keeper(transaction_manager)
    marked = locks.marked.pop(name, None)
    reservation = thread_keeper().claim(name)
    request = Request(key, options.timeout, options.interval, options.wait, options.conflicts,
                      adaptive=chosen.adaptive)
    policy = chosen.for_key(name)
    if policy.lock_at_commit(txn, name, request, marked, reservation):
        return True
    _take_for_transaction(txn, connections, name, request, policy, reservation, options.move_view)
    return True


def _take_for_transaction(txn: Transaction, connections: list[Connection], name: str, request: Request,
                          policy: Policy, reservation: Reservation | None, move_view: bool) -> None:
    """Take (or adopt) the lock now, check the view, hold it to the end; policy adaptive learns what it met."""
    started = time.monotonic()
    entry = reservation.adopt() if reservation is not None else None
    adopted = entry is not None
    used: dict[int, set[bytes] | None] = {}
    waited: list[bool] = []

    def before_waiting() -> None:
        # What the transaction used is worked out while the lock is busy, not once it is held.
        waited.append(True)
        used.update(viewmove.uses(connections))

    # A retry that adopted its reservation continues the transaction that met the writer (and counted it).
    learn = request.adaptive and policy.adaptive and not adopted
    try:
        if entry is None:
            entry = take(request, policy, before_waiting)
        entry.request.timeout = request.timeout
        try:
            moved = _check_view(entry, txn, connections, name, request.key, policy, adopted, started, used,
                                move_view)
            hold(txn, name, entry)
        except LockBusy:
            raise
        except BaseException:
            Reservation.release(entry)
            raise
    except LockBusy:
        if learn:
            adaptive.record(name, locked=True, met=True)
        if early.current() is not None and any(private.touched_oids(conn) for conn in connections):
            early.learn(name, (request, policy, move_view))  # it redoes its changes: lock at begin next time
        raise
    if learn:
        adaptive.record(name, locked=True, met=bool(waited) or moved)
    logger.debug("zlock %s held for the transaction (waited %.3fs)", name, time.monotonic() - started)


def lock_early(label: str | None) -> int:
    """A transaction of kind ``label`` begins: take the locks its kind learned to take now (:mod:`.early`).

    Called right after the transaction began (the Zope publisher part calls
    it for every request, with ``METHOD /path``); None ends the labelling.
    If the transaction has used and changed nothing yet, the locks are taken
    as at begin: the view is then brought forward, as if the transaction
    began now.  (Used means read through the pickle cache's order, as for the
    view move: code that reads ``__dict__`` between the begin and this call
    would not be seen, and Zope's publisher runs none.)  Otherwise each is
    taken as by :func:`lock_for_transaction`.
    Returns how many locks were taken.  Raises :class:`LockBusy` as that does.
    """
    early.begin(label)
    wanted = early.to_take(label) if label is not None else []
    txn = current_transaction() if wanted else None
    connections = views.connections_of(txn) if txn is not None else []
    if txn is None or not connections:
        return 0
    register_keeper()
    unused = all(used == set() for used in viewmove.uses(connections).values()) and not any(
        private.touched_oids(conn) for conn in connections)
    taken = 0
    for name, (request, policy, move_view) in wanted:
        if name in locks_of(txn).held:
            continue
        reservation = thread_keeper().claim(name)
        if unused:
            entry = reservation.adopt() if reservation is not None else None
            hold(txn, name, entry if entry is not None else take(request, policy))
        else:
            _take_for_transaction(txn, connections, name, request, policy, reservation, move_view)
        taken += 1
    if unused and taken:
        views.refresh_view(txn)
    logger.debug("%s: %d zlock(s) taken when the transaction began", label, taken)
    return taken


__all__ = ["lock_for_transaction", "hold_for_transaction", "lock_early", "current_transaction"]
