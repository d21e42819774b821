"""Every catalog writer that catalog.zcml locks, against a concurrent catalog_object on real ZEO.

Two threads, each a ZEO client of its own (its own ``ZEO.DB``) and its own
transaction, write one catalog: one calls ``catalog_object`` for a new
document, the other a catalog writer (``manage_catalogClear``,
``addIndex``, ...).  The first client pauses inside its commit, holding the
catalog's lock (policy ``always``: from its call to the end of its
transaction); the other one's transaction began before that commit and calls
its method while the lock is held.  With the patch it waits for the lock and
meets the commit made under the lock (its view is older).  In a thread that
has not used zlock before (``cold``) zlock does not know what the
transaction used, so it retries via ``LockBusy``; in a thread that has
(``warm``) the view is moved forward in place, because the second call used
nothing the first one changed.  Either way the method runs once on the new
state: the first commits at once, the second never meets a ConflictError at
commit, and the catalog ends exactly as if the two had run one after the
other (compared with the same two calls made serially on a twin catalog).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import transaction
import ZEO
from OFS.Application import Application
from OFS.Folder import Folder
from OFS.SimpleItem import SimpleItem
from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex
from Products.ZCatalog.ProgressHandler import ZLogHandler
from Products.ZCatalog.ZCatalog import ZCatalog
from ZODB.POSException import ConflictError
from ZPublisher.HTTPResponse import HTTPResponse

from unimr.memcachedlock import metrics
from unimr.memcachedlock.zodb import LockBusy, adaptive, lock_for_transaction


class Doc(SimpleItem):
    """A catalogued document: ``num`` is indexed and a metadata column."""

    def __init__(self, id: str, num: int) -> None:
        self.id = id
        self.num = num


#: The writers catalog.zcml locks besides catalog_object/uncatalog_object.
WRITERS: dict[str, Callable[[Any], Any]] = {
    "manage_catalogClear": lambda catalog: catalog.manage_catalogClear(),
    "refreshCatalog": lambda catalog: catalog.refreshCatalog(clear=1, pghandler=ZLogHandler()),
    "manage_catalogReindex": lambda catalog: catalog.manage_catalogReindex(
        None, HTTPResponse(), "http://127.0.0.1/site/catalog"),
    "addIndex": lambda catalog: catalog.addIndex("extra", FieldIndex("extra")),
    "delIndex": lambda catalog: catalog.delIndex("num"),
    "clearIndex": lambda catalog: catalog.clearIndex("num"),
    "addColumn": lambda catalog: catalog.addColumn("extra"),
    "delColumn": lambda catalog: catalog.delColumn("num"),
    # Without a request no path resolves: it uncatalogs every entry, writing uids and paths directly.
    "manage_normalize_paths": lambda catalog: catalog.manage_normalize_paths(None),
}


#: Writers that log "Process started" through ZCatalog's progress handler each time their body runs.
LOGS_ITS_RUNS = {"refreshCatalog", "manage_catalogReindex"}


class RunCounter(logging.Handler):
    """Counts the progress handler's "Process started" lines per thread: one per run of the body."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith("objects to go)"):
            self.runs[record.threadName] = self.runs.get(record.threadName, 0) + 1


@pytest.fixture
def run_counter():
    logger = logging.getLogger("ProgressHandler")
    counter = RunCounter()
    logger.addHandler(counter)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield counter
    logger.removeHandler(counter)
    logger.setLevel(level)


def catalog_new(catalog) -> None:
    catalog.catalog_object(catalog.aq_parent.new, "/site/new")


@pytest.fixture(scope="module")
def shared_zeo():
    """One ZEO server for the module; each test writes an application root of its own."""
    from zeoserver import ZEOServer

    with ZEOServer() as server:
        yield server


def build_site(conn, root_id: str) -> None:
    """An application root with a folder ``site``: a catalog (index and column ``num``),
    three catalogued documents and a new one, catalogued by physical path as Zope does."""
    app = conn.root()[root_id] = Application()
    app._setObject("site", Folder("site"), suppress_events=True)
    site = app.site
    site._setObject("catalog", ZCatalog("catalog"), suppress_events=True)
    catalog = site.catalog
    catalog.pgthreshold = 100  # manage_catalogReindex logs through a ZLogHandler
    catalog.addIndex("num", FieldIndex("num"))
    catalog.addColumn("num")
    for number in range(3):
        site._setObject("d%d" % number, Doc("d%d" % number, number), suppress_events=True)
        catalog.catalog_object(site["d%d" % number], "/site/d%d" % number)
    site._setObject("new", Doc("new", 9), suppress_events=True)


def the_catalog(conn, root_id: str):
    return conn.root()[root_id].site.catalog


def snapshot(catalog) -> dict:
    """What the catalog holds, by path (record ids are random)."""
    cat = catalog._catalog
    paths = dict(cat.paths.items())
    return {
        "uids": sorted(cat.uids.keys()),
        "length": len(catalog),
        "schema": sorted(cat.schema.items()),
        "metadata": sorted((paths[rid], tuple(record)) for rid, record in cat.data.items()),
        "indexes": {name: sorted((path, repr(index.getEntryForObject(rid))) for rid, path in paths.items())
                    for name, index in cat.indexes.items()},
    }


def pause_holding_the_lock(events: dict) -> None:
    events["held"].set()
    events["other began"].wait(10)
    time.sleep(0.2)  # let the other call block on the lock (not asserted)


def client(address, site_id: str, work: Callable, holds_first: bool, events: dict, report: dict,
           warm: bool) -> None:
    """One ZEO client: call ``work`` in a transaction, in turn with the other client; count what happens."""
    db = ZEO.DB(address)
    conn = db.open()
    report.update(busy=0, conflicts=0, commits=0)
    try:
        if warm:  # zlock marks where this thread's next views begin
            with transaction.manager:
                assert lock_for_transaction("warm-up:%s" % site_id)
        for attempt in transaction.manager.attempts(5):
            with attempt:
                catalog = the_catalog(conn, site_id)
                try:
                    if holds_first:
                        work(catalog)
                        # Runs inside the commit, while the lock taken by the call is held.
                        transaction.get().addBeforeCommitHook(pause_holding_the_lock, (events,))
                    else:
                        events["other began"].set()  # this transaction's view is fixed now
                        events["held"].wait(10)
                        work(catalog)
                    transaction.commit()
                except LockBusy:
                    report["busy"] += 1
                    raise
                except ConflictError:
                    report["conflicts"] += 1
                    raise
        report["commits"] += 1
    except BaseException as exc:
        report["error"] = repr(exc)
    finally:
        conn.close()
        db.close()


@pytest.mark.parametrize("threads_were", ["cold", "warm"])
@pytest.mark.parametrize("order", ["catalog_object first", "writer first"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writer_and_catalog_object_take_turns(catalog_patch, shared_zeo, run_counter, writer, order,
                                             threads_were):
    reports, moved = run_pair(shared_zeo, run_counter, writer, order, threads_were)
    assert reports[0] == {"busy": 0, "conflicts": 0, "commits": 1}, reports
    assert reports[1] == {"busy": 1 - moved, "conflicts": 0, "commits": 1}, reports
    assert moved == (1 if threads_were == "warm" else 0)


@pytest.mark.parametrize("order", ["catalog_object first", "writer first"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writer_and_optimistic_catalog_object_take_turns(catalog_patch, shared_zeo, run_counter, writer, order,
                                                        monkeypatch):
    """catalog_object's policy adaptive running optimistically: it passes the commit gate, and a writer
    (policy always) that replaces BTrees waits for it; after the writer, it retries at commit
    (LockBusy) instead of writing into the replaced BTrees.  The catalog ends as if run serially."""
    monkeypatch.setattr(adaptive, "START", adaptive.OPTIMISTIC)
    reports, moved = run_pair(shared_zeo, run_counter, writer, order, "warm")
    assert reports[0] == {"busy": 0, "conflicts": 0, "commits": 1}, reports
    assert reports[1]["commits"] == 1 and reports[1]["conflicts"] == 0 and reports[1]["busy"] <= 1, reports


def run_pair(shared_zeo, run_counter, writer: str, order: str, threads_were: str) -> tuple[list[dict], int]:
    """The two clients, the first pausing inside its commit; checks the catalog against the serial twin.

    Returns the clients' reports and the number of views moved.
    """
    site_id = "%s-%s-%s-%s" % (writer, order.split()[0], threads_were, adaptive.START)
    metrics.reset()
    pair = (catalog_new, WRITERS[writer])
    first, second = pair if order == "catalog_object first" else pair[::-1]
    db = ZEO.DB(shared_zeo.address, server_sync=True)
    try:
        conn = db.open()
        for name in (site_id, "twin-" + site_id):
            with transaction.manager:
                build_site(conn, name)
        for work in (first, second):  # the serial reference, on the twin
            with transaction.manager:
                work(the_catalog(conn, "twin-" + site_id))

        events = {"held": threading.Event(), "other began": threading.Event()}
        reports: list[dict] = [{}, {}]
        threads = [
            threading.Thread(target=client, name="first", args=(shared_zeo.address, site_id, first, True, events,
                                                                 reports[0], threads_were == "warm")),
            threading.Thread(target=client, name="second", args=(shared_zeo.address, site_id, second, False, events,
                                                                  reports[1], threads_were == "warm")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        moved = int(metrics.snapshot()["Products.ZCatalog.ZCatalog.ZCatalog"]["view_moves"])
        if writer in LOGS_ITS_RUNS:  # the writer's body ran once: never on the stale view
            runs = {thread: count for thread, count in run_counter.runs.items() if thread != "MainThread"}
            assert runs == {"first" if order == "writer first" else "second": 1}
        with transaction.manager:
            assert snapshot(the_catalog(conn, site_id)) == snapshot(the_catalog(conn, "twin-" + site_id))
        conn.close()
    finally:
        db.close()
    return reports, moved
