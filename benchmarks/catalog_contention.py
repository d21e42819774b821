"""Catalog contention: K ZEO clients catalog documents into one ZCatalog.

Every client is a separate process with its own ZEO connection (default
``server_sync`` off, as a Zope instance has).  Each "request" does W ms of
CPU work of its own (standing for rendering, workflow, text extraction...),
then calls ``ZCatalog.catalog_object`` for a new document and commits; a
ConflictError -- and with the patch, zlock's ``LockBusy`` -- is retried at
once like ``transaction.manager.attempts()`` does.  Two modes, run
alternately on a fresh ZEO server each time:

``unpatched``
    Zope as shipped: ZCatalog's BTrees resolve most conflicts, the rest
    throw the request's work away.
``patched``
    The clients load the source tree's top-level ``configure.zcml``, which
    zlocks ``catalog_object``/``uncatalog_object`` per catalog.

Printed per run: ``catalog_object`` runs wasted per commit (runs whose
transaction did not commit), LockBusy and ConflictError retries per commit,
lost entries (documents committed but missing from the catalog, or an entry
count that differs), and wall time; at the end the ratio patched/unpatched.

    .venv/bin/python benchmarks/catalog_contention.py --clients 4 --docs 25 --work-ms 2
    .venv/bin/python benchmarks/catalog_contention.py --matrix      # several W and catalog sizes

The lock store is a private memcached on a free loopback port (the
``memcached`` binary must be installed) unless ``--servers`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
SITE_ZCML = os.path.join(ROOT, "configure.zcml")
WORDS = ("zope", "zodb", "zeo", "catalog", "lock", "memcached", "plone", "index", "btree", "commit",
         "retry", "conflict", "view", "tid", "lease", "site")
MAX_ATTEMPTS = 20


class Document:
    """A catalogued object: the attributes the indexes and metadata read."""

    def __init__(self, uid: str, number: int) -> None:
        rnd = random.Random(uid)
        self.id = uid
        self.title = "Document %s" % uid
        self.subject = tuple(rnd.sample(WORDS, 3))
        self.number = number


def make_catalog(conn, size: int) -> None:
    """Create ``root['catalog']`` with typical indexes and ``size`` existing entries."""
    import transaction
    from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex
    from Products.PluginIndexes.KeywordIndex.KeywordIndex import KeywordIndex
    from Products.ZCatalog.ZCatalog import ZCatalog

    catalog = ZCatalog("catalog")
    catalog.addIndex("id", FieldIndex("id"))
    catalog.addIndex("title", FieldIndex("title"))
    catalog.addIndex("subject", KeywordIndex("subject"))
    catalog.addIndex("number", FieldIndex("number"))
    catalog.addColumn("title")
    catalog.addColumn("number")
    conn.root()["catalog"] = catalog
    transaction.commit()
    for start in range(0, size, 500):
        for i in range(start, min(size, start + 500)):
            catalog.catalog_object(Document("old-%d" % i, i), "old-%d" % i)
        transaction.commit()


def burn(work_ms: float) -> None:
    """Spend ``work_ms`` milliseconds of this thread's CPU time."""
    end = time.thread_time() + work_ms / 1000.0
    while time.thread_time() < end:
        pass


def run_worker(args: argparse.Namespace) -> None:
    """One ZEO client: wait for "go" on stdin, catalog ``docs`` documents, print JSON counts."""
    import transaction
    import ZEO
    from ZODB.POSException import ConflictError

    if args.patched:
        from zope.configuration import xmlconfig

        xmlconfig.file(SITE_ZCML)
    from unimr.memcachedlock.zlock import LockBusy

    db = ZEO.DB(("127.0.0.1", args.zeo_port))
    conn = db.open()
    tm = transaction.manager
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    counts = {"runs": 0, "commits": 0, "busy": 0, "conflicts": 0, "failed": 0}
    started = time.monotonic()
    for n in range(args.docs):
        uid = "c%d-d%d" % (args.client, n)
        for _attempt in range(MAX_ATTEMPTS):
            tm.begin()
            try:
                catalog = conn.root()["catalog"]
                burn(args.work_ms)
                catalog.catalog_object(Document(uid, n), uid)
                counts["runs"] += 1
                tm.commit()
                counts["commits"] += 1
                break
            except LockBusy:
                tm.abort()
                counts["busy"] += 1
            except ConflictError:
                tm.abort()
                counts["conflicts"] += 1
        else:
            counts["failed"] += 1
    counts["seconds"] = time.monotonic() - started
    conn.close()
    db.close()
    print(json.dumps(counts), flush=True)


def run_once(clients: int, docs: int, work_ms: float, size: int, patched: bool, servers: str) -> dict[str, Any]:
    """One measured run on a fresh ZEO server; returns the totals."""
    import transaction
    import ZEO

    sys.path.insert(0, TESTS)
    from zeoserver import ZEOServer

    env = dict(os.environ, MEMCACHEDLOCK_SERVERS=servers, MEMCACHEDLOCK_BACKEND="memcached",
               PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    with ZEOServer() as zeo:
        db = ZEO.DB(zeo.address)
        conn = db.open()
        make_catalog(conn, size)
        conn.close()
        procs = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", "--client", str(i),
                 "--zeo-port", str(zeo.port), "--docs", str(docs), "--work-ms", str(work_ms)]
                + (["--patched"] if patched else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=zeo.directory,
            )
            for i in range(clients)
        ]
        results = []
        try:
            for proc in procs:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a benchmark client died while starting (exit %s)" % proc.wait(10))
            started = time.monotonic()
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a benchmark client died (exit %s)" % proc.wait(10))
                results.append(json.loads(line))
            wall = time.monotonic() - started
        finally:
            for proc in procs:
                if proc.poll() is None:
                    try:
                        proc.stdin.close()
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        transaction.begin()
        conn = db.open()
        catalog = conn.root()["catalog"]
        uids = set(catalog._catalog.uids)
        entries = len(catalog)
        conn.close()
        transaction.abort()
        db.close()
    total = {key: sum(r[key] for r in results) for key in ("runs", "commits", "busy", "conflicts", "failed")}
    expected = {"c%d-d%d" % (c, n) for c in range(clients) for n in range(docs)}
    committed = total["commits"]
    total.update(
        mode="patched" if patched else "unpatched",
        clients=clients, docs=docs, work_ms=work_ms, size=size, wall=wall,
        wasted=total["runs"] - committed,
        wasted_per_commit=(total["runs"] - committed) / max(1, committed),
        busy_per_commit=total["busy"] / max(1, committed),
        conflicts_per_commit=total["conflicts"] / max(1, committed),
        lost=len(expected - uids) - total["failed"],
        miscounted=entries - size - len(expected & uids),
        entries=entries,
    )
    return total


def describe(result: dict[str, Any]) -> str:
    return ("%(mode)-9s K=%(clients)d N=%(docs)d W=%(work_ms)gms size=%(size)d: "
            "wasted %(wasted_per_commit).3f/commit (%(wasted)d of %(runs)d runs), "
            "LockBusy %(busy_per_commit).3f/commit, conflicts %(conflicts_per_commit).3f/commit, "
            "lost %(lost)d, miscounted %(miscounted)d, failed %(failed)d, wall %(wall).2fs" % result)


def compare(clients: int, docs: int, work_ms: float, size: int, repeat: int, servers: str) -> list[dict]:
    """``repeat`` alternating pairs of runs; prints each run and the wall-time ratios."""
    results = []
    ratios = []
    for _ in range(repeat):
        pair = {}
        for patched in (False, True):
            result = run_once(clients, docs, work_ms, size, patched, servers)
            print(describe(result), flush=True)
            results.append(result)
            pair[patched] = result
        ratios.append(pair[True]["wall"] / pair[False]["wall"])
        print("  ratio patched/unpatched wall: %.2f" % ratios[-1], flush=True)
    if repeat > 1:
        print("  ratios: %s (median %.2f)" % (", ".join("%.2f" % r for r in ratios), statistics.median(ratios)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--docs", type=int, default=25, help="documents per client")
    parser.add_argument("--work-ms", type=float, default=2.0, help="CPU work per request before catalog_object")
    parser.add_argument("--size", type=int, default=0, help="entries in the catalog before the run")
    parser.add_argument("--repeat", type=int, default=1, help="alternating pairs of runs")
    parser.add_argument("--matrix", action="store_true", help="W in 0, 2, 10, 20 ms and sizes 0, 2000")
    parser.add_argument("--servers", default=None, help="memcached servers (default: start one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--zeo-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--patched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    for name in ("clients", "docs", "repeat"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1, not %r" % (name, getattr(args, name)))
    if args.work_ms < 0 or args.size < 0:
        parser.error("--work-ms and --size must not be negative")
    server = None
    servers = args.servers
    if servers is None:
        sys.path.insert(0, TESTS)
        from servers import MemcachedServer

        server = MemcachedServer().start()
        servers = server.address
    try:
        if args.matrix:
            for size in (0, 2000):
                for work_ms in (0.0, 2.0, 10.0, 20.0):
                    compare(args.clients, args.docs, work_ms, size, args.repeat, servers)
        else:
            compare(args.clients, args.docs, args.work_ms, args.size, args.repeat, servers)
    finally:
        if server is not None:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
