"""Catalog writes through the real Zope publisher: unpatched against the site's configure.zcml.

P Zope processes (``tests/zopeinstance.py``: Zope's ``make_wsgi_app`` behind
waitress, T worker threads each) are ZEO clients of one real ZEO server.
T client threads per process send N requests each over HTTP on loopback;
each request does W ms of CPU work and catalogs one document, through
Products.CMFCore's indexing queue (``--path cmfcore``, Plone's way: the
catalog is written inside ``commit()``) or by calling ``catalog_object``
(``--path plain``).  Every retry runs through
``ZPublisher.WSGIPublisher.publish_module`` with ``max-conflict-retries 3``
and Zope's own back-off, as in production.

Printed per run: wall time, the retries Products.SiteErrorLog logged
(ConflictError and LockBusy), ``catalog_object`` runs wasted (runs minus
documents), failed requests and documents missing from the catalog; then
the ratio patched/unpatched.  Each mode runs on a fresh ZEO server.

    .venv/bin/python benchmarks/publisher_contention.py --work-ms 100 --repeat 3
    .venv/bin/python benchmarks/publisher_contention.py --work-ms 1000 --docs 4
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

MODES = ("unpatched", "patched")


def retried(log: str, exc: str) -> int:
    """How many retries of ``exc`` Products.SiteErrorLog reported for the index requests."""
    # LockBusy's lines are at DEBUG with the catalog patch (zope/conflicts.py); the test instances log them.
    pattern = r"(?:INFO|DEBUG) Zope\.SiteErrorLog %s at /@@mcl-index: .*Request will be retried\." % exc
    return len(re.findall(pattern, log))


def run_once(mode: str, processes: int, threads: int, docs: int, work_ms: float, path: str,
             servers: str, hot: bool = False) -> dict:
    """One run on a fresh ZEO server with ``processes`` fresh Zope processes."""
    from zeoserver import ZEOServer
    from zopeinstance import ZopeInstance

    env = {"MEMCACHEDLOCK_SERVERS": servers, "MEMCACHEDLOCK_BACKEND": "memcached"}
    with ZEOServer() as zeo:
        env["MEMCACHEDLOCK_PREFIX"] = "pub%d:" % zeo.port
        zopes = [ZopeInstance(zeo.port, patched=mode == "patched", threads=threads, env=env)
                 for _ in range(processes)]
        failed: list[str] = []
        try:
            for zope in zopes:
                zope.start()
            if zopes[0].get("/@@mcl-setup") != b"ok":
                raise RuntimeError("the catalog was not set up")

            def client(zope, name: str) -> None:
                for n in range(docs):
                    query = {"uid": "%s-%d" % (name, n), "work_ms": work_ms}
                    if path == "cmfcore":
                        query["queue"] = 1
                    if hot:
                        query["hot"] = 1
                    try:
                        if zope.get("/@@mcl-index?" + urllib.parse.urlencode(query), timeout=300) != b"ok":
                            failed.append(query["uid"])
                    except Exception:
                        failed.append(query["uid"])

            clients = [threading.Thread(target=client, args=(zope, "p%d-t%d" % (p, t)))
                       for p, zope in enumerate(zopes) for t in range(threads)]
            started = time.monotonic()
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            wall = time.monotonic() - started
            runs = sum(zope.json("/_mcl_stats")["runs"] for zope in zopes)
            content = zopes[0].json("/@@mcl-count")
            log = "".join(zope.read("event.log") for zope in zopes)
        finally:
            for zope in zopes:
                zope.__exit__(None, None, None)
    expected = {"p%d-t%d-%d" % (p, t, n) for p in range(processes) for t in range(threads) for n in range(docs)}
    uids = set(content["uids"])
    return dict(mode=mode, wall=wall, conflicts=retried(log, "ConflictError"), busy=retried(log, "LockBusy"),
                runs=runs, wasted=runs - len(expected) + len(failed), failed=len(failed),
                missing=len(expected - uids) - len(failed), unexpected=len(uids - expected),
                entries=content["entries"], documents=len(expected), tracebacks=log.count("Traceback"),
                hot=content["hot"])


def describe(result: dict) -> str:
    return ("%(mode)-9s wall %(wall)6.2fs  ConflictError retries %(conflicts)3d  LockBusy retries %(busy)3d  "
            "wasted runs %(wasted)3d  failed %(failed)d  missing %(missing)d" % result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="worker threads per Zope, and clients per Zope")
    parser.add_argument("--docs", type=int, default=8, help="requests per client thread")
    parser.add_argument("--work-ms", type=float, default=100.0, help="CPU work per request before cataloging")
    parser.add_argument("--path", choices=("cmfcore", "plain"), default="cmfcore")
    parser.add_argument("--hot", action="store_true",
                        help="every request changes one shared object before the catalog, as Plone's uid generator")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--servers", default=None, help="memcached servers (default: start one)")
    args = parser.parse_args(argv)
    for name in ("processes", "threads", "docs", "repeat"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1, not %r" % (name, getattr(args, name)))
    if args.work_ms < 0:
        parser.error("--work-ms must not be negative, not %r" % args.work_ms)
    server = None
    servers = args.servers
    if servers is None:
        from unimr.memcachedlock.tools.servers import MemcachedServer

        server = MemcachedServer().start()
        servers = server.address
    print("%d Zope processes x %d threads, %d requests per thread, %g ms of work, path %s" % (
        args.processes, args.threads, args.docs, args.work_ms, args.path), flush=True)
    try:
        for _ in range(args.repeat):
            row = {}
            for mode in MODES:
                row[mode] = run_once(mode, args.processes, args.threads, args.docs, args.work_ms, args.path,
                                     servers, args.hot)
                print(describe(row[mode]), flush=True)
            print("  patched / unpatched wall: %.2fx" % (row["patched"]["wall"] / row["unpatched"]["wall"]),
                  flush=True)
    finally:
        if server is not None:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
