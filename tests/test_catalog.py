"""The catalog patch with plain ZEO clients (no publisher), as the acceptance suite loads it."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import transaction
import ZEO

from unimr.memcachedlock import registry
from unimr.memcachedlock.keys import lock_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import catalog_contention  # noqa: E402  (benchmarks/ is not a package)


def test_catalog_and_uncatalog_share_one_lock_taken_at_commit(catalog_patch, zeo_server):
    """Policy on-conflict (the site default): the calls run unlocked, and the commit
    passes the catalog's one commit gate once, leaving the lock free for a holder
    (who waits for the commit: see test_zlock_policies)."""
    db = ZEO.DB(zeo_server.address)
    try:
        tm = transaction.manager  # zlock follows the thread's current transaction
        conn = db.open()
        tm.begin()
        from Products.ZCatalog.ZCatalog import ZCatalog

        conn.root()["catalog"] = ZCatalog("catalog")
        tm.commit()
        name = lock_name("Products.ZCatalog.ZCatalog.ZCatalog:catalog")
        backend = registry.get_backend()
        seen: list = []
        passing: list = []

        def other_thread_can_take() -> None:
            passing.append(backend.commit_gate.passing(name))
            lease = backend.acquire(name, 5)
            seen.append(lease is not None)
            if lease is not None:
                lease.release()

        def in_other_thread() -> None:
            thread = threading.Thread(target=other_thread_can_take)
            thread.start()
            thread.join(10)

        txn = tm.begin()
        catalog = conn.root()["catalog"]
        result = catalog.catalog_object(catalog_contention.Document("a", 1), "a")
        assert result is None  # ZCatalog 7.4's catalog_object returns None; the wrapper passes it on
        in_other_thread()
        catalog.uncatalog_object("a")
        catalog.catalog_object(catalog_contention.Document("b", 2), "b")
        txn.addBeforeCommitHook(in_other_thread)  # runs after zlock's own before-commit hook
        tm.commit()
        other_thread_can_take()
        assert seen == [True, True, True] and passing == [0, 1, 0]
        tm.begin()
        assert sorted(conn.root()["catalog"]._catalog.uids.keys()) == ["b"]
        tm.abort()
        conn.close()
    finally:
        db.close()


@pytest.mark.slow
def test_zeo_clients_fail_no_request_and_lose_nothing(memcached):
    """The site default (on-conflict, conflicts=3): optimistic tries, the last one locked, none failed."""
    result = catalog_contention.run_once(3, 10, 2.0, memcached.address, "on-conflict", immediate=True)
    assert result["commits"] == 30
    assert result["failed"] == 0, result
    assert result["lost"] == 0 and result["miscounted"] == 0, result
