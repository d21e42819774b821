"""Canary: the private ZODB and transaction names zlock reads (all in ``zodbprivate.py``) still exist.

If ZODB or transaction renames one of them, zlock would quietly stop
checking views and writing notes; this test fails loudly instead.
"""

from __future__ import annotations

import transaction
import ZODB
from ZODB.mvccadapter import MVCCAdapterInstance

from unimr.memcachedlock import zodbprivate


def test_the_private_names_zlock_reads_still_exist():
    db = ZODB.DB(None)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    try:
        txn = manager.begin()
        conn.root()["canary"] = 1
        instances = {
            "ZODB.Connection.Connection": conn,
            "ZODB.mvccadapter.MVCCAdapterInstance": conn._normal_storage,
            "transaction.Transaction": txn,
        }
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
        assert zodbprivate.view_start(zodbprivate.normal_storage(conn)) is not None
    finally:
        manager.abort()
        conn.close()
        db.close()
