"""What a zlock policy decides, as the methods the transaction code calls: one strategy object per policy.

The policy named by a call (``always``, ``on-conflict``, ``adaptive``) is
turned into its object once (:func:`.policies.policy_named`); every later
decision is a call on it or on the object a held lock was taken with
(``Entry.policy``).  The objects keep no state: what a key met, what a
thread reserved or marked, is kept elsewhere (:mod:`.adaptive`,
:mod:`.reservations`).
"""

from __future__ import annotations

from .private import Connection, Transaction
from .reservations import Reservation
from .taking import Entry, Request


class Policy:
    """A zlock policy: how a call takes its lock, how its view is checked, what its commit records."""

    #: The policy's name, as ``policy=`` gives it.
    name = ""
    #: True if a commit made under the lock is recorded as exclusive (it may have replaced objects).
    exclusive = False
    #: True if a reservation of the lock is adopted when the thread's next transaction begins
    #: (else by the call, after the caught-up begin).
    adopts_at_begin = False
    #: True if the locked transactions of the policy are recorded for the key (policy adaptive).
    adaptive = False

    def for_key(self, name: str) -> Policy:
        """The policy lock ``name`` is taken with now (policy adaptive: by what its writers met)."""
        return self

    def lock_at_commit(self, txn: Transaction, name: str, request: Request, marked: Request | None,
                       reservation: Reservation | None) -> bool:
        """True if the call runs now and the lock is taken at commit instead (then arranged)."""
        return False

    def fresh_views(self, entry: Entry, connections: list[Connection], name: str, adopted: bool
                    ) -> tuple[bool, str]:
        """Whether the views of a transaction that just took the lock contain the last commit made under it.

        Also, when they do not, the newest such tid as ``" (tid %s)"`` (or "") for the LockBusy.
        """
        raise NotImplementedError

    def count_conflict(self, entry: Entry, txn: Transaction) -> None:
        """``txn``'s commit failed or it was aborted: count a ConflictError if that is why."""


__all__ = ["Policy"]
