"""Canary: the private ZODB and transaction names zlock reads (all in ``zodb/private.py``) still exist.

If ZODB or transaction renames one of them, zlock would quietly stop
checking views and writing notes; this test fails loudly instead.
"""

from __future__ import annotations

import transaction
import ZODB
from ZODB.mvccadapter import MVCCAdapterInstance

from unimr.memcachedlock.zodb import private as zodbprivate


def test_the_private_names_zlock_reads_still_exist():
    db = ZODB.DB(None)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    try:
        txn = manager.begin()
        conn.root()["canary"] = 1
        txn.savepoint()
        instances = {
            "ZODB.Connection.Connection": conn,
            "ZODB.Connection.TmpStore": conn._savepoint_storage,
            "ZODB.mvccadapter.MVCCAdapterInstance": conn._normal_storage,
            "transaction.Transaction": txn,
        }
        assert zodbprivate.touched_oids(conn) == {conn.root()._p_oid}
        assert conn in zodbprivate.resources(txn)
        seen: list = []
        zodbprivate.each_synchronizer(txn, seen.append)
        assert conn in seen
        txn.commit()
        missing = [
            "%s.%s" % (owner, name)
            for owner, names in zodbprivate.PRIVATE_NAMES.items()
            for name in names
            if not hasattr(instances[owner], name)
        ]
        assert missing == []
        storage = zodbprivate.normal_storage(conn)
        assert isinstance(storage, MVCCAdapterInstance)
        assert zodbprivate.last_committed(storage) == db.lastTransaction()
        manager.begin()
        storage = zodbprivate.normal_storage(conn)
        start = zodbprivate.view_start(storage)
        assert start is not None and zodbprivate.pending_invalidations(storage) == set()
        other_manager = transaction.TransactionManager()
        other = db.open(other_manager)
        other_manager.begin()
        other.root()["canary"] = 2
        other_manager.commit()
        other.close()
        assert zodbprivate.pending_invalidations(storage) == {conn.root()._p_oid}
        ghosted: list = []
        assert zodbprivate.advance_view(storage, db.lastTransaction(), lambda oids: False, ghosted.append) is None
        assert zodbprivate.view_start(storage) == start and ghosted == []
        assert zodbprivate.advance_view(storage, db.lastTransaction(), lambda oids: True,
                                        ghosted.append) == {conn.root()._p_oid}
        assert ghosted == [{conn.root()._p_oid}]
        assert zodbprivate.view_start(storage) > db.lastTransaction() >= start
        assert zodbprivate.pending_invalidations(storage) == set()
    finally:
        manager.abort()
        conn.close()
        db.close()
