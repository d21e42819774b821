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


def new_catalog(tm, conn):
    from Products.ZCatalog.ZCatalog import ZCatalog

    tm.begin()
    conn.root()["catalog"] = ZCatalog("catalog")
    tm.commit()


class OtherThread:
    """Looks at the catalog's lock from another thread: can it be taken, how many commits pass its gate."""

    def __init__(self) -> None:
        self.name = lock_name("Products.ZCatalog.ZCatalog.ZCatalog:catalog")
        self.backend = registry.get_backend()
        self.seen: list = []
        self.passing: list = []

    def look_now(self) -> None:
        self.passing.append(self.backend.commit_gate.passing(self.name))
        lease = self.backend.acquire(self.name, 5)
        self.seen.append(lease is not None)
        if lease is not None:
            lease.release()

    def look(self) -> None:
        thread = threading.Thread(target=self.look_now)
        thread.start()
        thread.join(10)


def test_catalog_and_uncatalog_share_one_lock_held_until_the_transaction_ends(catalog_patch, zeo_server):
    """Policy always (the site default): the first call takes the catalog's lock, the other
    calls re-enter it, and it is held through the commit, then released."""
    db = ZEO.DB(zeo_server.address)
    try:
        tm = transaction.manager  # zlock follows the thread's current transaction
        conn = db.open()
        new_catalog(tm, conn)
        other = OtherThread()
        txn = tm.begin()
        catalog = conn.root()["catalog"]
        result = catalog.catalog_object(catalog_contention.Document("a", 1), "a")
        assert result is None  # ZCatalog 7.4's catalog_object returns None; the wrapper passes it on
        other.look()
        catalog.uncatalog_object("a")
        catalog.catalog_object(catalog_contention.Document("b", 2), "b")
        txn.addBeforeCommitHook(other.look)
        tm.commit()
        other.look_now()
        assert other.seen == [False, False, True] and other.passing == [0, 0, 0]
        tm.begin()
        assert sorted(conn.root()["catalog"]._catalog.uids.keys()) == ["b"]
        tm.abort()
        conn.close()
    finally:
        db.close()


def test_on_conflict_catalog_calls_pass_the_gate_at_commit(catalog_patch, zeo_server):
    """Policy on-conflict (overridden): the calls run unlocked, and the commit passes the
    catalog's one commit gate once, leaving the lock free for a holder (who waits for the
    commit: see test_zlock_policies)."""
    catalog_contention.relock_catalog("on-conflict", 3)
    db = ZEO.DB(zeo_server.address)
    try:
        tm = transaction.manager
        conn = db.open()
        new_catalog(tm, conn)
        other = OtherThread()
        txn = tm.begin()
        catalog = conn.root()["catalog"]
        catalog.catalog_object(catalog_contention.Document("a", 1), "a")
        other.look()
        catalog.uncatalog_object("a")
        catalog.catalog_object(catalog_contention.Document("b", 2), "b")
        txn.addBeforeCommitHook(other.look)  # runs after zlock's own before-commit hook
        tm.commit()
        other.look_now()
        assert other.seen == [True, True, True] and other.passing == [0, 1, 0]
        tm.begin()
        assert sorted(conn.root()["catalog"]._catalog.uids.keys()) == ["b"]
        tm.abort()
        conn.close()
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["plain", "cmfcore"])
def test_zeo_clients_fail_no_request_waste_nothing_and_lose_nothing(memcached, path):
    """Policy always: every catalog write takes turns, none conflicts or fails."""
    shape = catalog_contention.Shape(3, 2.0, "heavy", path, immediate=True)
    result = catalog_contention.run_once(shape, 10, memcached.address, "always")
    assert result["commits"] == 30
    assert result["failed"] == 0 and result["conflicts"] == 0 and result["wasted"] == 0, result
    assert result["lost"] == 0 and result["miscounted"] == 0, result


@pytest.mark.slow
@pytest.mark.parametrize("path", ["plain", "cmfcore"])
def test_the_site_default_fails_no_request_and_loses_nothing(memcached, path):
    """The site default (adaptive), on writers that keep meeting: nothing fails or is lost, and no
    request needs more than two tries (the locked retry never fails on the catalog's key)."""
    shape = catalog_contention.Shape(3, 2.0, "heavy", path, immediate=True)
    result = catalog_contention.run_once(shape, 10, memcached.address, "adaptive")
    assert result["commits"] == 30 and result["failed"] == 0, result
    assert result["lost"] == 0 and result["miscounted"] == 0, result
    assert result["most_tries"] <= 2, result


class Indexed:
    """Something Plone's catalog tool can catalog (it has no indexes here: only its uid and counter count)."""

    def __init__(self, uid: str) -> None:
        self.id = uid


def test_plones_catalog_tool_takes_the_lock_before_it_counts_the_write(catalog_patch, zeo_server):
    """CMFPlone's CatalogTool changes its ``_counter`` (a Length) before it calls ZCatalog's
    catalog_object.  The lock is taken before that: a transaction that waited behind another
    client's catalog write has its view moved forward instead of a LockBusy, and both writes count."""
    from Products.CMFPlone.CatalogTool import CatalogTool

    from unimr.memcachedlock import metrics

    from clients import in_another_client

    db = ZEO.DB(zeo_server.address)
    conn = db.open()
    try:
        tm = transaction.manager
        tm.begin()
        conn.root()["portal_catalog"] = CatalogTool()
        tm.commit()
        tm.begin()  # this thread's first zlock transaction: its views are watched from the next one on
        conn.root()["portal_catalog"].catalog_object(Indexed("first"), "first")
        tm.commit()
        metrics.reset()
        tm.begin()
        catalog = conn.root()["portal_catalog"]  # loaded at this view; its counter is not touched yet
        in_another_client(zeo_server.address,
                          lambda root: root["portal_catalog"].catalog_object(Indexed("other"), "other"))
        catalog.catalog_object(Indexed("mine"), "mine")  # no LockBusy: the view moves past the other's commit
        tm.commit()
        assert sum(data["view_moves"] for data in metrics.snapshot().values()) == 1
        assert sum(data["busy_retries"] for data in metrics.snapshot().values()) == 0
        tm.begin()
        assert catalog.getCounter() == 3
        assert sorted(catalog._catalog.uids.keys()) == ["first", "mine", "other"]
        tm.abort()
    finally:
        transaction.abort()
        conn.close()
        db.close()


def test_a_catalog_without_a_physical_path_still_works_patched(catalog_patch, zeo_server, caplog):
    """ZCatalog's own ``testBooleanEvalOn_refreshCatalog_getobject``: a catalog under a parent without
    ``getPhysicalPath``.  Stored in a database it is locked by its oid; not stored, it runs unlocked with
    one warning per catalog class; the patched methods work as the unpatched ones."""
    import logging

    from Acquisition import Implicit
    from Products.ZCatalog.ZCatalog import ZCatalog

    class Document:
        id = "doc"

        def getPhysicalPath(self):
            return ("", "doc")

    class ParentWithoutPath(Implicit):
        """Like the suite's FakeParent: no ``getPhysicalPath``."""

    caplog.set_level(logging.WARNING, logger="unimr.memcachedlock.zope.catalog")
    bare = ZCatalog("loose")
    bare.resolve_path = lambda path: Document()  # as the suite's TestZCatalog does
    loose = bare.__of__(ParentWithoutPath())
    for _ in range(2):
        loose.catalog_object(Document(), "/doc")
        loose.refreshCatalog()
    assert len(loose) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "called unlocked" in warnings[0], warnings

    db = ZEO.DB(zeo_server.address)
    conn = db.open()
    try:
        new_catalog(transaction.manager, conn)
        transaction.begin()
        stored = conn.root()["catalog"].__of__(ParentWithoutPath())
        stored.catalog_object(Document(), "/doc")
        held = registry.get_backend().list_locks()
        transaction.commit()
        assert [h.name for h in held] == [lock_name("Products.ZCatalog.ZCatalog.ZCatalog:oid:%s:%s"
                                                    % (db.database_name, stored._p_oid.hex()))]
        assert len(caplog.records) == 1  # no new warning: it was locked
    finally:
        transaction.abort()
        conn.close()
        db.close()
