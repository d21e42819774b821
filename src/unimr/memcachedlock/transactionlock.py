"""The former home of zlock, kept as an import path for site code: the public names of :mod:`.zodb`.

zlock now lives in the ``zodb`` subpackage (see its docstring); import from
``unimr.memcachedlock`` or ``unimr.memcachedlock.zodb`` in new code.
"""

from __future__ import annotations

from .zodb import (
    DEFAULT_CONFLICTS,
    DEFAULT_POLICY,
    POLICIES,
    RESERVE_FOR,
    LockBusy,
    lock_early,
    lock_for_transaction,
    storage_identity,
    txn_wait,
    zlock,
)

__all__ = ["zlock", "LockBusy", "lock_for_transaction", "lock_early", "storage_identity", "txn_wait",
           "POLICIES", "DEFAULT_POLICY", "RESERVE_FOR", "DEFAULT_CONFLICTS"]
