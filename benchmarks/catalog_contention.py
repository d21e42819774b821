"""Catalog contention: K ZEO clients catalog documents into one ZCatalog, unpatched and patched.

Every client is a separate process with its own ZEO connection (default
``server_sync`` off, as a Zope instance has).  Each "request" does W ms of
CPU work of its own (rendering, workflow, text extraction...), then catalogs
one new document and commits.  What is modelled of Zope's publisher
(``ZPublisher.WSGIPublisher.publish_module``, default ``max-conflict-retries``
3): at most 4 tries per request; a request whose 4th try fails is counted as
*failed* (the user would get an error page); between tries the transaction is
aborted and ``HTTPRequest.delay_retry`` sleeps ``random.uniform(0, 2 **
retry_count)`` seconds (up to 1, 2, 4 s; the modes of a round draw the same
pause for the same client, document and try) -- with the patch, the publisher
patch of ``catalog.zcml`` skips that sleep when the retry will hold the lock
(:func:`unimr.memcachedlock.zope.publisher.retry_at_once`).  ``--immediate``
retries without any sleep instead (how the issue's first figures were taken).

Catalogs: ``light`` (1 FieldIndex, no metadata) and ``heavy`` (9 FieldIndexes,
a KeywordIndex and 9 metadata columns).  Two ways to reach the catalog:

``plain``
    the request calls ``ZCatalog.catalog_object`` itself;
``cmfcore``
    Plone's path: the request queues the document with Products.CMFCore's
    indexing queue (``getQueue().index(doc)``); the queue's before-commit hook
    calls an ``IIndexQueueProcessor`` that calls ``ZCatalog.catalog_object``,
    i.e. inside ``commit()``.

Modes, each on a fresh ZEO server: ``unpatched`` (Zope as shipped: ZCatalog's
BTrees resolve most conflicts, the rest throw the request's work away) and
patched with each zlock policy: ``adaptive``, the default of the top-level
``configure.zcml`` (``always`` while a process's catalog writes meet other
clients', ``on-conflict:1`` while they do not), ``always`` (every catalog
write holds the lock to the end of its transaction; a waiter's view is moved
forward in place), and ``on-conflict`` (optimistic; ``conflicts="3"``: Zope's
fourth and last try holds the lock from its begin); ``on-conflict:N`` is
on-conflict with ``conflicts=N``.

Shapes: ``--size`` pre-fills the catalog (default 0: a fresh catalog that
fills up during the run), ``--store-rtt-ms`` puts a proxy that holds back
every reply of memcached in front of it (``rtt_proxy.py``, a process of its
own: a lock store a network hop away),
``--matrix`` runs every cell of ``MATRIX`` (40: light/heavy, plain/cmfcore,
4/8/16 clients, back-off and immediate retries; then the 0.3 ms store and a
catalog of 2000 entries at 8 clients).  ``--breakdown`` prints where a
commit's time goes: the wait for the lock, the note, the view check, the
catalog work, ZEO's two-phase commit and the release, each summed over all
clients and divided by the commits.

Printed per run: wall time, ``catalog_object`` runs wasted per commit (runs
whose transaction did not commit), ConflictError and LockBusy retries, failed
requests, lost entries (documents committed but missing from the catalog, or
an entry count that differs); then, per cell, the ratio patched/unpatched.

    .venv/bin/python benchmarks/catalog_contention.py --clients 4 --work-ms 2
    .venv/bin/python benchmarks/catalog_contention.py --matrix --repeat 2
    .venv/bin/python benchmarks/catalog_contention.py --catalog light --path cmfcore --clients 8 \
        --immediate --modes always --breakdown --store-rtt-ms 0.3

The lock store is a private memcached on a free loopback port (the
``memcached`` binary must be installed) unless ``--servers`` names one,
reached through the default store (``fallback``, with a lock directory of
the run's own) unless ``--store memcached``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
SITE_ZCML = os.path.join(ROOT, "configure.zcml")
WORDS = ("zope", "zodb", "zeo", "catalog", "lock", "memcached", "plone", "index", "btree", "commit",
         "retry", "conflict", "view", "tid", "lease", "site")
#: Zope's default max-conflict-retries (3) plus the first try.
TRIES = 4
CATALOGS = ("light", "heavy")
PATHS = ("plain", "cmfcore")
POLICIES = ("adaptive", "always", "on-conflict")
#: The policy of catalog_object in the site's configure.zcml (catalog.zcml).
SITE_POLICY = "adaptive"
#: ``on-conflict`` alone: Zope's fourth and last try locked (its default max-conflict-retries is 3).
ON_CONFLICT_CONFLICTS = 3
#: Attributes the heavy catalog indexes (FieldIndex each) and stores as metadata.
HEAVY_FIELDS = ("id", "title", "number", "portal_type", "review_state", "creator", "language", "created",
                "modified")


class Document:
    """A catalogued object: the attributes the indexes and metadata read."""

    def __init__(self, uid: str, number: int) -> None:
        rnd = random.Random(uid)
        self.id = uid
        self.title = "Document %s" % uid
        self.subject = tuple(rnd.sample(WORDS, 3))
        self.number = number
        self.portal_type = rnd.choice(("Document", "News Item", "Event", "File"))
        self.review_state = rnd.choice(("private", "pending", "published"))
        self.creator = "user%d" % rnd.randrange(20)
        self.language = rnd.choice(("en", "de", "fr"))
        self.created = 1_700_000_000 + number
        self.modified = 1_700_000_000 + rnd.randrange(10**6)

    def getPhysicalPath(self) -> tuple[str, ...]:
        return ("", "docs", self.id)


def make_catalog(conn, size: int, shape: str = "heavy") -> None:
    """Create ``root['catalog']`` (``light`` or ``heavy``) with ``size`` existing entries."""
    import transaction
    from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex
    from Products.PluginIndexes.KeywordIndex.KeywordIndex import KeywordIndex
    from Products.ZCatalog.ZCatalog import ZCatalog

    catalog = ZCatalog("catalog")
    if shape == "light":
        catalog.addIndex("id", FieldIndex("id"))
    else:
        for field in HEAVY_FIELDS:
            catalog.addIndex(field, FieldIndex(field))
            catalog.addColumn(field)
        catalog.addIndex("subject", KeywordIndex("subject"))
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


def split_mode(mode: str) -> tuple[str, int | None]:
    """``on-conflict:1`` -> ("on-conflict", 1); ``on-conflict`` alone locks Zope's last try (conflicts=3)."""
    policy, _, conflicts = mode.partition(":")
    if policy not in POLICIES or (conflicts and (not conflicts.isdigit() or policy != "on-conflict")):
        raise ValueError("unknown mode %r: use unpatched, %s or on-conflict:N" % (mode, ", ".join(POLICIES)))
    if policy == "on-conflict":
        return policy, int(conflicts) if conflicts else ON_CONFLICT_CONFLICTS
    return policy, None


def apply_policy(mode: str) -> None:
    """Load the site's configure.zcml; re-lock the catalog methods if ``mode`` is not its default."""
    from zope.configuration import xmlconfig

    xmlconfig.file(SITE_ZCML)
    policy, conflicts = split_mode(mode)
    if policy != SITE_POLICY:
        relock_catalog(policy, conflicts)


def relock_catalog(policy: str, conflicts: int | None = None) -> None:
    """Lock catalog_object and uncatalog_object with another policy, as a site's overrides.zcml would."""
    from Products.ZCatalog.ZCatalog import ZCatalog

    from unimr.memcachedlock.zope import catalog as catalog_keys
    from unimr.memcachedlock.zope import patch

    options = {"policy": policy} if conflicts is None else {"policy": policy, "conflicts": conflicts}
    for method in ("catalog_object", "uncatalog_object"):
        patch.unlock_method(ZCatalog, method)
        patch.lock_method(ZCatalog, method, catalog_keys.catalog_key, "zlock",
                          name=catalog_keys.LOCK_NAME, **options)


def install_queue_processor(conn, counts: dict) -> None:
    """Register an IIndexQueueProcessor that catalogs queued documents into ``root['catalog']``."""
    from Products.CMFCore.interfaces import IIndexQueueProcessor
    from Products.ZCatalog.ZCatalog import ZCatalog
    from zope.component import provideUtility
    from zope.interface import implementer

    @implementer(IIndexQueueProcessor)
    class BenchmarkProcessor:
        def index(self, obj, attributes=None):
            ZCatalog.catalog_object(conn.root()["catalog"], obj, obj.id)
            counts["runs"] += 1

        def reindex(self, obj, attributes=None, update_metadata=1):
            self.index(obj, attributes)

        def unindex(self, obj):
            ZCatalog.uncatalog_object(conn.root()["catalog"], obj.id)

        def begin(self):
            pass

        def commit(self):
            pass

        def abort(self):
            pass

    provideUtility(BenchmarkProcessor(), IIndexQueueProcessor, name="benchmark")


def backoff(seed: int, client: int, doc: int, retry_count: int) -> float:
    """``HTTPRequest.delay_retry``'s ``random.uniform(0, 2 ** retry_count)``, drawn from common random numbers.

    Every mode of a round draws the same pause for the same client, document
    and try, so the modes' wall times differ by what the lock changes, not
    by luck of the draw; each pause is still uniform, and rounds differ.
    """
    return random.Random("%d-%d-%d-%d" % (seed, client, doc, retry_count)).uniform(0, 2 ** retry_count)


#: Where a commit's time goes (``--breakdown``): label, module, attribute.  Each is timed where it is called.
BREAKDOWN = (
    ("wait for lock", "unimr.memcachedlock.zodb.taking", "_acquire"),
    ("note read", "unimr.memcachedlock.zodb.taking", "_read_note"),
    ("view check/move", "unimr.memcachedlock.zodb.locking", "_check_view"),
    ("gate or lock at commit", "unimr.memcachedlock.zodb.policy_onconflict", "_take_pending"),
    ("catalog work", "Products.ZCatalog.Catalog", "Catalog.catalogObject"),
    ("ZEO two-phase commit", "transaction._transaction", "Transaction._commitResources"),
    ("note write", "unimr.memcachedlock.zodb.holding", "_write_note"),
    ("release and handoff", "unimr.memcachedlock.zodb.reservations", "Reservation.release"),
)


def time_parts(spent: dict[str, float]) -> None:
    """Wrap the BREAKDOWN functions so that the seconds spent in each add up in ``spent``."""
    import functools
    import importlib

    for label, module_name, attribute in BREAKDOWN:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        spent[label] = 0.0

        def timed(*args, _original=original, _label=label, **kw):
            started = time.perf_counter()
            try:
                return _original(*args, **kw)
            finally:
                spent[_label] += time.perf_counter() - started

        setattr(owner, name, functools.wraps(original)(timed))


def run_worker(args: argparse.Namespace) -> None:
    """One ZEO client: wait for "go" on stdin, publish ``docs`` requests, print JSON counts."""
    import transaction
    import ZEO
    from ZODB.POSException import ConflictError

    from unimr.memcachedlock.zodb import LockBusy

    patched = args.policy != "unpatched"
    if patched:
        apply_policy(args.policy)
        from unimr.memcachedlock.zope.publisher import retry_at_once
    db = ZEO.DB(("127.0.0.1", args.zeo_port))
    conn = db.open()
    tm = transaction.manager
    counts = {"runs": 0, "commits": 0, "busy": 0, "conflicts": 0, "failed": 0, "slept": 0.0, "most_tries": 0}
    if args.breakdown:
        counts["spent"] = {}
        time_parts(counts["spent"])
    queue = None
    if args.path == "cmfcore":
        from Products.CMFCore.indexing import getQueue

        install_queue_processor(conn, counts)
        queue = getQueue()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    for n in range(args.docs):
        uid = "c%d-d%d" % (args.client, n)
        for retry_count in range(TRIES):
            tm.begin()
            try:
                catalog = conn.root()["catalog"]
                burn(args.work_ms)
                if queue is not None:
                    queue.index(Document(uid, n))
                else:
                    catalog.catalog_object(Document(uid, n), uid)
                    counts["runs"] += 1
                tm.commit()
                counts["commits"] += 1
                counts["most_tries"] = max(counts["most_tries"], retry_count + 1)
                break
            except ConflictError as exc:  # LockBusy is one too
                tm.abort()
                counts["busy" if isinstance(exc, LockBusy) else "conflicts"] += 1
                if retry_count == TRIES - 1:
                    counts["failed"] += 1
                elif not args.immediate and not (patched and retry_at_once(exc)):
                    pause = backoff(args.seed, args.client, n, retry_count)
                    counts["slept"] += pause
                    time.sleep(pause)
    counts["seconds"] = time.monotonic() - started
    conn.close()
    db.close()
    print(json.dumps(counts), flush=True)


#: Lock stores a run can use: the default a site gets first.
STORES = ("fallback", "memcached")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One cell of the benchmark: what the clients do and where the lock store is."""

    clients: int = 4
    work_ms: float = 2.0
    catalog: str = "heavy"
    path: str = "plain"
    #: Entries in the catalog before the run (0: a fresh catalog that fills up during it).
    size: int = 0
    #: Retry without Zope's back-off sleep.
    immediate: bool = False
    #: Round trip added to every lock-store request by a delaying proxy (0: memcached on loopback).
    store_rtt_ms: float = 0.0

    def describe(self) -> str:
        return "%s %s K=%d W=%gms size=%d %s rtt=%gms" % (
            self.catalog, self.path, self.clients, self.work_ms, self.size,
            "immediate" if self.immediate else "back-off", self.store_rtt_ms)


def run_once(shape: Shape, docs: int, servers: str, policy: str = SITE_POLICY, seed: int = 0,
             breakdown: bool = False, store: str = STORES[0]) -> dict[str, Any]:
    """One measured run on a fresh ZEO server; ``policy`` is ``unpatched`` or a zlock policy, ``store``
    the lock store's kind (``fallback``, the default a site gets, or ``memcached``)."""
    import transaction
    import ZEO

    sys.path.insert(0, TESTS)
    from rtt_proxy import RttProxy

    from zeoserver import ZEOServer

    delayed = RttProxy(servers, shape.store_rtt_ms / 1000.0) if shape.store_rtt_ms else None
    with ZEOServer() as zeo, delayed or contextlib.nullcontext(), tempfile.TemporaryDirectory() as lock_dir:
        # Keys of their own per run: a site's lock notes hold one ZEO server, not every run's.
        env = dict(os.environ, MEMCACHEDLOCK_SERVERS=delayed.address if delayed else servers,
                   MEMCACHEDLOCK_BACKEND=store, MEMCACHEDLOCK_DIR=lock_dir, MEMCACHEDLOCK_PREFIX="bench%d:" % zeo.port,
                   PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
        db = ZEO.DB(zeo.address)
        conn = db.open()
        make_catalog(conn, shape.size, shape.catalog)
        conn.close()
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--zeo-port", str(zeo.port),
                   "--docs", str(docs), "--work-ms", str(shape.work_ms), "--policy", policy, "--path", shape.path,
                   "--seed", str(seed)] + (["--immediate"] if shape.immediate else []) + (
                   ["--breakdown"] if breakdown else [])
        results, wall = run_clients(command, shape.clients, env, zeo.directory)
        transaction.begin()
        conn = db.open()
        catalog = conn.root()["catalog"]
        uids = set(catalog._catalog.uids)
        entries = len(catalog)
        conn.close()
        transaction.abort()
        db.close()
    total = {key: sum(r[key] for r in results) for key in ("runs", "commits", "busy", "conflicts", "failed", "slept")}
    expected = {"c%d-d%d" % (c, n) for c in range(shape.clients) for n in range(docs)}
    committed = total["commits"]
    total["most_tries"] = max(r["most_tries"] for r in results)
    if breakdown:
        total["spent"] = {label: sum(r["spent"][label] for r in results) for label, _, _ in BREAKDOWN}
    total.update(
        dataclasses.asdict(shape), mode=policy, docs=docs, wall=wall,
        wasted=total["runs"] - committed,
        wasted_per_commit=(total["runs"] - committed) / max(1, committed),
        lost=len(expected - uids) - total["failed"],
        miscounted=entries - shape.size - len(expected & uids),
        entries=entries,
    )
    return total


def run_clients(command: list[str], clients: int, env: dict, cwd: str) -> tuple[list[dict], float]:
    """Start ``clients`` workers, let them go at once, collect their counts and the wall time."""
    procs = [subprocess.Popen(command + ["--client", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=cwd)
             for i in range(clients)]
    results = []
    try:
        for proc in procs:
            if not proc.stdout.readline():
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
    return results, wall


def describe(result: dict[str, Any]) -> str:
    line = ("%(mode)-13s wall %(wall)6.2fs  wasted %(wasted_per_commit).3f/commit (%(wasted)d)  "
            "conflicts %(conflicts)d  LockBusy %(busy)d  failed %(failed)d  lost %(lost)d  "
            "miscounted %(miscounted)d  slept %(slept).1fs" % result)
    if "spent" in result:
        commits = max(1, result["commits"])
        line += "\n    ms per commit: " + ", ".join(
            "%s %.2f" % (label, seconds * 1000 / commits) for label, seconds in result["spent"].items())
    return line


def proxied_round_trip(servers: str, rtt_ms: float) -> float:
    """The median round trip, in ms, of a memcached ``get`` through the delaying proxy (what ``rtt_ms`` gives)."""
    from pymemcache.client.base import Client
    from rtt_proxy import RttProxy

    with RttProxy(servers, rtt_ms / 1000.0) as proxy:
        host, port = proxy.address.rsplit(":", 1)
        client = Client((host, int(port)))
        times = []
        for _ in range(101):
            started = time.perf_counter()
            client.get("round-trip")
            times.append(time.perf_counter() - started)
        client.close()
    return statistics.median(times) * 1000


def cell(shape: Shape, docs: int, modes: list[str], repeat: int, servers: str, breakdown: bool,
         store: str = STORES[0]) -> list[dict]:
    """``repeat`` rounds of every mode, alternating; prints each run and the ratios to unpatched."""
    print("%s, %d documents per client, %s store" % (shape.describe(), docs, store), flush=True)
    if shape.store_rtt_ms:
        print("  a get through the proxy takes %.2f ms (median, idle machine)"
              % proxied_round_trip(servers, shape.store_rtt_ms), flush=True)
    results = []
    for _ in range(repeat):
        row = {}
        seed = random.randrange(1 << 30)
        for mode in modes:
            result = run_once(shape, docs, servers, mode, seed, breakdown, store)
            print("  " + describe(result), flush=True)
            results.append(result)
            row[mode] = result
        base = row.get("unpatched")
        if base:
            print("  ratio to unpatched: %s" % ", ".join(
                "%s %.2fx" % (m, row[m]["wall"] / base["wall"]) for m in modes if m != "unpatched"), flush=True)
    return results


CELL_FIELDS = ("catalog", "path", "clients", "work_ms", "size", "immediate", "store_rtt_ms")


def summary(results: list[dict], modes: list[str]) -> None:
    """One line per cell and policy: every run's ratio, the failed/lost/wasted totals against unpatched."""
    print("\n| catalog | path | K | W ms | size | retries | store rtt ms | policy | wall ratios (each run) | median "
          "| failed (unpatched) | lost | wasted/commit (unpatched) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    key = lambda r: tuple(r[field] for field in CELL_FIELDS)  # noqa: E731
    for cell_key, group in itertools.groupby(sorted(results, key=key), key=key):
        group = list(group)
        base = [r for r in group if r["mode"] == "unpatched"]
        catalog, path, clients, work_ms, size, immediate, rtt = cell_key
        for mode in modes:
            if mode == "unpatched" or not base:
                continue
            runs = [r for r in group if r["mode"] == mode]
            ratios = [r["wall"] / b["wall"] for r, b in zip(runs, base, strict=True)]
            print("| %s | %s | %d | %g | %d | %s | %g | %s | %s | %.2f | %d (%d) | %d | %s (%s) |" % (
                catalog, path, clients, work_ms, size, "immediate" if immediate else "back-off", rtt,
                mode, ", ".join("%.2f" % x for x in ratios), statistics.median(ratios),
                sum(r["failed"] for r in runs), sum(b["failed"] for b in base), sum(r["lost"] for r in runs),
                ", ".join("%.3f" % r["wasted_per_commit"] for r in runs),
                ", ".join("%.3f" % b["wasted_per_commit"] for b in base)), flush=True)


#: ``--matrix``: blocks of cells, each every combination of its values (catalog, path, clients, size,
#: retries, store rtt; 2 ms of request work).  The first block is the core; the others vary the lock
#: store's distance and the catalog's size at 8 clients.
MATRIX = (
    {"catalog": CATALOGS, "path": PATHS, "clients": (4, 8, 16), "size": (0,), "immediate": (True, False),
     "store_rtt_ms": (0.0,)},
    {"catalog": CATALOGS, "path": PATHS, "clients": (8,), "size": (0,), "immediate": (True, False),
     "store_rtt_ms": (0.3,)},
    {"catalog": CATALOGS, "path": PATHS, "clients": (8,), "size": (2000,), "immediate": (True, False),
     "store_rtt_ms": (0.0,)},
)
MATRIX_FIELDS = ("catalog", "path", "clients", "size", "immediate", "store_rtt_ms")


def matrix_shapes(args: argparse.Namespace) -> list[Shape]:
    """The cells of ``--matrix``; a dimension given with ``--fix`` is kept at its option's value."""
    shapes = []
    for block in MATRIX:
        dims = dict(block)
        for field in args.fix or ():
            dims[field] = (getattr(args, field),)
        for values in itertools.product(*dims.values()):
            shape = Shape(work_ms=args.work_ms, **dict(zip(dims, values, strict=True)))
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--docs", type=int, default=25, help="documents (requests) per client")
    parser.add_argument("--work-ms", dest="work_ms", type=float, default=2.0,
                        help="CPU work per request before cataloging")
    parser.add_argument("--catalog", choices=CATALOGS, default="heavy")
    parser.add_argument("--path", choices=PATHS, default="plain")
    parser.add_argument("--size", type=int, default=0, help="entries in the catalog before the run")
    parser.add_argument("--modes", default="unpatched,%s" % SITE_POLICY,
                        help="comma-separated: unpatched, zlock policies, on-conflict:N (conflicts=N)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every mode")
    parser.add_argument("--immediate", action="store_true", help="retry without Zope's back-off sleep")
    parser.add_argument("--store-rtt-ms", dest="store_rtt_ms", type=float, default=0.0,
                        help="round trip added to every lock-store request (a delaying proxy)")
    parser.add_argument("--matrix", action="store_true",
                        help="every cell of MATRIX; --fix NAME keeps a dimension at its option's value")
    parser.add_argument("--fix", action="append", choices=MATRIX_FIELDS, metavar="NAME",
                        help="with --matrix: keep dimension NAME (e.g. clients) at its option's value")
    parser.add_argument("--breakdown", action="store_true",
                        help="print where the time of a commit goes (wait, note, view, catalog, ZEO, release)")
    parser.add_argument("--store", choices=STORES, default=STORES[0],
                        help="the lock store (default fallback: a site's unless it sets MEMCACHEDLOCK_BACKEND)")
    parser.add_argument("--servers", default=None, help="memcached servers (default: start one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--zeo-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="unpatched", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    for name in ("clients", "docs", "repeat"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1, not %r" % (name, getattr(args, name)))
    if args.work_ms < 0 or args.size < 0 or args.store_rtt_ms < 0:
        parser.error("--work-ms, --size and --store-rtt-ms must not be negative")
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode != "unpatched":
            try:
                split_mode(mode)
            except ValueError as exc:
                parser.error(str(exc))
    if args.matrix:
        shapes = matrix_shapes(args)
    else:
        shapes = [Shape(args.clients, args.work_ms, args.catalog, args.path, args.size, args.immediate,
                        args.store_rtt_ms)]
    server = None
    servers = args.servers
    if servers is None:
        from unimr.memcachedlock.tools.servers import MemcachedServer

        server = MemcachedServer().start()
        servers = server.address
    results = []
    try:
        for shape in shapes:
            results += cell(shape, args.docs, modes, args.repeat, servers, args.breakdown, args.store)
    finally:
        if server is not None:
            server.kill()
    summary(results, modes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
