"""zlock: a lock held until the ZODB transaction ends, that turns contention into one cheap retry.

Why not simply ``lock``?  Two ZEO clients that write the same hot object
(a catalog, a counter) both do their expensive work and one of them loses it
to a ConflictError at commit.  Serialising the *call* does not help: the
lock is released before the commit, and a connection's view of the database
is fixed when its transaction begins, so the second writer works on the state
from before the first one's commit and conflicts anyway.  zlock therefore

1. holds the lock from the first call in a transaction until that transaction
   ends (after-commit and after-abort hooks release it; later calls in the same
   transaction re-enter it);
2. records, when a transaction commits under the lock, the tid it committed
   (a *note* in the lock store that outlives the lock);
3. after taking the lock, compares that tid with the transaction's view.  If
   the view is older, the ZEO client is brought up to date (one server round
   trip if the commit has not arrived yet) and the view is moved forward in
   place, provided the transaction cannot have seen the old state of
   anything the newer commits changed (``viewmove``; never with
   ``move_view=False``): the function then runs on the current state, and no
   work is retried.  Otherwise the function is not
   run: the lock is kept *reserved* for this thread and :class:`LockBusy` --
   a ``ConflictError`` -- asks ``transaction.manager.attempts()``, ``run()``
   or the Zope publisher to retry.  The retry adopts the reservation without
   waiting and sees the commit.

A reservation that no retry claims is freed at the end of the thread's next
transaction, or after :data:`RESERVE_FOR` seconds (plus at most one renewal
period) at the latest.  Where each view begins is marked by zlock's
transaction synchronizer (``reservations``), registered for a thread when it first uses zlock:
a thread's first transaction therefore cannot move its view (LockBusy).

That is policy ``always``.  Policy ``adaptive``, the default, is
``always`` while a key's writers meet and ``on-conflict`` (``conflicts=1``)
while they do not, per process (see ``adaptive``).  Policy ``on-conflict`` is
optimistic: the function runs unlocked, and a before-commit hook
passes the key's *commit gate* (``interfaces.ICommitGate``): optimistic
commits go in together but never while the lock is held, and a new holder
waits for those that passed before it, so no commit of the key's objects
comes between a holder's view and its commit.  Two store round trips: into
the gate (reading the note: exclusive writers, see
``policy_onconflict``) and out of it (appending the commit's tid).
Stores without a gate take the lock at commit instead.  ZODB's
conflict resolution decides as usual.  After ``conflicts`` ConflictErrors in
a row (default 1; 3 makes Zope's fourth and last try the locked one) the key
is *marked* for this thread, and the thread's next
transaction takes the lock when it begins and brings its view forward (a
server round trip and a poll of invalidations) before it reads anything.  That
retry holds the lock for its whole transaction, so no other commit of the
key's objects can come between its view and its commit.  See docs/zlock.rst.

Inside a transaction a wait for the lock is bounded by :func:`txn_wait`
(``MEMCACHEDLOCK_TXN_WAIT``, default 5 s): a longer wait raises LockBusy (a
ConflictError: the publisher retries with its normal back-off) instead of
blocking a worker thread until the holder's lease runs out.

Outside a transaction that has a ZODB connection (scripts, threads without a
database), or without ZODB and ``transaction`` installed, zlock holds the lock
only for the call, re-entrantly, like ``rlock``.

The view is read from the connection's MVCC adapter (``_start``, the tid the
snapshot reads before) and the connections from the transaction's
synchronizers and resources: ZODB 5/6 and transaction 3+ offer no public API
for either.  Notes are keyed by an identity of the storage that every client
shares (a ZEO server's address and storage name); a storage local to the
process (a temporary storage, a local mount) is keyed with the process's
identity, so its tids are never compared across clients.  RelStorage has no
such view tid: policy ``always`` then only serialises (one warning at first
use); policy ``on-conflict`` needs no tid, RelStorage polls at every begin.

The modules, from the bottom up: ``private`` (every read of a private ZODB
attribute), ``busy`` (LockBusy), ``notes`` (the note: its codec and its
reading rule), ``viewmove`` (moving a view forward in place), ``views``
(connections, storage identity, freshness), ``adaptive`` and ``early``
(what this process learned per key and per kind of request), ``taking``
(taking a lock and reading its note), ``reservations`` (locks kept for a
retry, and the thread's keeper), ``holding`` (what a transaction holds; its
hooks write the note and release), ``policy`` with ``policy_always``,
``policy_onconflict``, ``policy_adaptive`` and ``policies`` (one strategy
object per policy, chosen once by name), ``locking`` (:func:`lock_for_transaction`,
:func:`lock_early`) and ``decorator`` (:func:`zlock`).
"""

from __future__ import annotations

from ..options import DEFAULT_CONFLICTS, DEFAULT_POLICY, POLICIES
from .busy import LockBusy
from .decorator import zlock
from .locking import lock_early, lock_for_transaction
from .reservations import RESERVE_FOR
from .taking import txn_wait
from .views import storage_identity

__all__ = ["zlock", "LockBusy", "lock_for_transaction", "lock_early", "storage_identity", "txn_wait",
           "POLICIES", "DEFAULT_POLICY", "RESERVE_FOR", "DEFAULT_CONFLICTS"]
