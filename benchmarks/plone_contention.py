"""Plone contention: K HTTP clients write into one folder of a real Plone 6 site, unpatched and patched.

The site is real: Plone 6.2 with plone.restapi, one ZEO server, I Zope
processes (``runwsgi``: waitress with T worker threads each, default 2 x 2),
as ``tests/plonesite.py`` builds them.  K client threads (``requests``, basic
auth as the site's admin) each work through D documents of their own in the
folder ``/Plone/folder``; per document, in this order, the ``--ops`` asked for:

``add``         ``POST /Plone/folder`` (a Document with a title and rich text)
``edit``        ``PATCH`` its title and text
``transition``  ``POST .../@workflow/publish``
``delete``      ``DELETE`` it -- one document in ``--delete-every`` (default 2)

A client sends its requests to the instances in turn (request n of client c
to instance (c + n) mod I): a balancer without stickiness.  Every request
runs through Zope's publisher with ``max-conflict-retries 3`` (four tries,
Zope's back-off between them), as in production; a request whose fourth try
fails answers HTTP 500.

Modes: ``unpatched`` (Plone as shipped) and ``patched`` (the package's
``catalog.zcml`` included through an ``etc/package-includes`` slug, a
memcached on loopback named in zope.conf's ``<environment>``, a key prefix of
the round's own, the default (fallback) store with a lock directory of the
round's own unless ``--store memcached``).  ``--pairs N`` runs N pairs of rounds, unpatched then
patched.  Every round starts from the same state: a fresh ZEO server on a copy
of one template ``Data.fs`` (the site, made once and cached, see
``tests/plonesite.py``) and freshly started Zope processes (their ZODB caches
start cold in every round alike).

Printed per round: wall time, latency p50/p95 (all requests, then per op),
HTTP 500s; the retries Products.SiteErrorLog logged, by exception class; the
conflicts (every failed try: the harness's ``IPubFailure`` subscriber logs it
with its method) by the class of the object the ConflictError names (for a
LockBusy, the oid it names, looked up in the stored database after the run)
and by request (method and path, document ids folded into ``{doc}``); the
documents in the folder and in the catalog, checked after the run: ``lost``
(answered 201 and not deleted, yet missing from the folder or the catalog),
``duplicated`` (a title twice in the folder, a UID twice in the catalog),
``extra`` (in the folder or catalog but not expected: a failed request that
committed, an entry left by a delete), and the folder's ordering; and the
longest time an instance completed no request while at least one request to
it was outstanding (from the clients' timestamps).  Then a table of every
round and the patched/unpatched ratios of each pair.

``--trace`` also records, inside the Zope processes, what every transaction
stored and, patched, where it first asked for the catalog's zlock (stack,
objects changed and used by then) and the LockBusy it met; it prints which
persistent objects a document add writes and which ones every add writes
(the hot spots), and where and why the lock was first taken.  Tracing slows
the requests a little: take timings from rounds without it.

    .venv/bin/python benchmarks/plone_contention.py                     # 8 x 25 adds, one pair
    .venv/bin/python benchmarks/plone_contention.py --pairs 2
    .venv/bin/python benchmarks/plone_contention.py --ops add,edit,transition,delete --docs 12
    .venv/bin/python benchmarks/plone_contention.py --clients 4 --docs 5 --modes patched --trace

The lock store is a private memcached on a free loopback port (the
``memcached`` binary must be installed) unless ``--servers`` names one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import plonesite  # noqa: E402  (tests/ is not a package)

OPS = ("add", "edit", "transition", "delete")
MODES = ("unpatched", "patched")


def client_work(client: int, urls: list[str], docs: int, ops: tuple[str, ...], delete_every: int,
                start: threading.Event, out: dict) -> None:
    """One client's documents, op after op; what succeeded goes to ``out``."""
    rest = plonesite.RestClient(urls, first=client)
    added, deleted = [], []
    start.wait()
    try:
        for n in range(docs):
            doc_id = "c%d-d%d" % (client, n)
            if not rest.add(doc_id):
                continue
            added.append(doc_id)
            if "edit" in ops:
                rest.edit(doc_id)
            if "transition" in ops:
                rest.transition(doc_id)
            if "delete" in ops and n % delete_every == delete_every - 1 and rest.delete(doc_id):
                deleted.append(doc_id)
    finally:
        rest.close()
    out[client] = {"added": added, "deleted": deleted, "records": rest.records}


def longest_stall(records: list[dict], instances: int) -> list[float]:
    """Per instance: the longest time it completed no request while one to it was outstanding."""
    stalls = []
    for instance in range(instances):
        mine = sorted((r["start"], r["end"]) for r in records if r["instance"] == instance)
        longest = 0.0
        # Walk the busy periods (unions of outstanding intervals); inside one, the gaps between completions.
        i = 0
        while i < len(mine):
            period_start, period_end = mine[i]
            ends = [mine[i][1]]
            i += 1
            while i < len(mine) and mine[i][0] <= period_end:
                period_end = max(period_end, mine[i][1])
                ends.append(mine[i][1])
                i += 1
            last = period_start
            for end in sorted(ends):
                longest = max(longest, end - last)
                last = end
        stalls.append(longest)
    return stalls


def fold_path(path: str) -> str:
    """A request path with the document id folded: ``/Plone/folder/{doc}/@workflow/publish``."""
    return re.sub(r"^(%s)/[^/]+" % re.escape(plonesite.FOLDER_PATH), r"\1/{doc}", path)


def fold_doc(name: str) -> str:
    """An object's name with a document id folded (``/Plone/folder/{doc}.workflow_history``)."""
    name = re.sub(r"(%s)/c\d+-d\d+" % re.escape(plonesite.FOLDER_PATH), r"\1/{doc}", name)
    name = re.sub(r"'c\d+-d\d+'", "'{doc}'", name)
    return re.sub(r"\['?\d+'?\]", "[n]", name)  # CMFEditions' history ids, version numbers, log keys


def conflict_kind(message: str, classes: dict[str, str]) -> str:
    """The class of the object a ConflictError or LockBusy names, or what kind of LockBusy it is."""
    oid, cls = plonesite.conflict_object(message)
    if cls:
        return cls
    if oid:
        return classes.get(oid, "oid %s" % oid)
    if "is unknown" in message:
        return "(view not movable: what it used is unknown, a thread's first transaction)"
    if "MEMCACHEDLOCK_TXN_WAIT" in message:
        return "(lock wait limit reached)"
    if "exclusively" in message:
        return "(lock: exclusive commit since the view)"
    return "(%s)" % message[:60]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def committed_adds(traces: list[dict]) -> list[dict]:
    return [t for t in traces if t["method"] == "POST" and t["path"] == plonesite.FOLDER_PATH
            and t["outcome"] == "committed"]


def hot_spots(traces: list[dict], share: float = 0.5) -> list[tuple[str, int, str]]:
    """(oid, adds that wrote it, class) of the existing objects written by at least ``share`` of the adds."""
    adds = committed_adds(traces)
    written_by = collections.Counter()
    kinds = {}
    for t in adds:
        for oid, kind in {(oid, kind) for stored in t["stored"] for oid, kind, new in stored["objects"] if not new}:
            written_by[oid] += 1
            kinds[oid] = kind
    return [(oid, n, kinds[oid]) for oid, n in written_by.most_common() if n >= share * len(adds)]


def run_round(mode: str, args: argparse.Namespace, servers: str, data_fs: str, number: int) -> dict:
    """One round on a fresh ZEO server (a copy of the template) and fresh Zope processes."""
    patched = mode == "patched"
    cluster = plonesite.PloneCluster(args.instances, args.threads, patched=patched, servers=servers,
                                     prefix="plonebench%d-%d:" % (os.getpid(), number), trace=args.trace,
                                     keep=args.keep, data_fs=data_fs, store=args.store)
    with cluster:
        start = threading.Event()
        out: dict = {}
        threads = [threading.Thread(target=client_work, args=(c, cluster.urls, args.docs, args.ops,
                                                               args.delete_every, start, out))
                   for c in range(args.clients)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        start.set()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        log = cluster.logs()
        tries = plonesite.failures(log)
        traces = cluster.traces() if args.trace else []
        oids = {oid for f in tries for oid in [plonesite.conflict_object(f["message"])[0]] if oid}
        oids |= {oid for oid, _, _ in hot_spots(traces)}
        oids |= {b["oid"] for t in traces for b in t.get("busy", []) if b.get("oid")}
        oids |= {oid for t in traces for oid in [plonesite.conflict_object(t.get("error") or "")[0]] if oid}
        oids |= {oid for t in traces for b in t.get("busy", [])
                 for key in ("blocking_changed", "blocking_used", "blocking_in_memory")
                 for oid, _ in b.get(key, [])}
        state = cluster.inspect(sorted(oids))
        startup = dict(cluster.timings)
    records = [r for c in sorted(out) for r in out[c]["records"]]
    added = {d for c in out for d in out[c]["added"]}
    deleted = {d for c in out for d in out[c]["deleted"]}
    expected = added - deleted
    return dict(mode=mode, number=number, wall=wall, records=records, expected=expected, added=added,
                deleted=deleted, retried=plonesite.retries(log), tries=tries, state=state, traces=traces,
                startup=startup, tracebacks=log.count("Traceback"),
                stalls=longest_stall(records, args.instances))


def check_content(result: dict) -> dict:
    """Lost, duplicated and extra documents, in the folder and the catalog, and the ordering's state."""
    state, expected = result["state"], result["expected"]
    folder_ids = [item["id"] for item in state["items"]]
    entries = state["entries"]
    entry_ids = [e["path"].rsplit("/", 1)[1] for e in entries]
    titles = collections.Counter(item["title"].replace(" (edited)", "") for item in state["items"])
    uids = collections.Counter(e["uid"] for e in entries)
    folder_uids = {item["id"]: item["uid"] for item in state["items"]}
    mismatched = sum(1 for e in entries if folder_uids.get(e["path"].rsplit("/", 1)[1]) != e["uid"])
    order = state["order"]
    return dict(
        folder=len(folder_ids), catalog=len(entries),
        lost_folder=len(expected - set(folder_ids)), lost_catalog=len(expected - set(entry_ids)),
        duplicated=sum(n - 1 for n in titles.values() if n > 1) + sum(n - 1 for n in uids.values() if n > 1),
        extra_folder=len(set(folder_ids) - expected), extra_catalog=len(set(entry_ids) - expected),
        uid_mismatch=mismatched,
        ordering_ok=(sorted(order) == sorted(folder_ids) and len(order) == len(set(order))
                     and state["folder_length"] == len(folder_ids)),
    )


def summarise(result: dict) -> dict:
    records = result["records"]
    latencies = [r["end"] - r["start"] for r in records]
    by_op = collections.defaultdict(list)
    for r in records:
        by_op[r["op"]].append(r["end"] - r["start"])
    statuses = collections.Counter(r["status"] for r in records)
    content = check_content(result)
    classes = result["state"]["classes"]
    names = result["state"].get("names", {})
    conflicts_by_class = collections.Counter()
    conflicts_by_object = collections.Counter()
    conflicts_by_request = collections.Counter()
    for f in result["tries"]:
        kind = conflict_kind(f["message"], classes)
        oid = plonesite.conflict_object(f["message"])[0]
        conflicts_by_class[(f["exc"], kind)] += 1
        conflicts_by_object[(f["exc"], names.get(oid) or (oid and "oid %s %s" % (oid, kind)) or kind)] += 1
        conflicts_by_request[(f["exc"], f["method"], fold_path(f["path"]))] += 1
    return dict(
        mode=result["mode"], number=result["number"], wall=result["wall"], requests=len(records),
        p50=percentile(latencies, 50), p95=percentile(latencies, 95),
        ops={op: (len(v), percentile(v, 50), percentile(v, 95)) for op, v in by_op.items()},
        http500=statuses.get(500, 0),
        other_errors=sum(n for s, n in statuses.items() if s not in (200, 201, 204, 500)),
        retried=collections.Counter(f["exc"] for f in result["tries"] if f["retry"]),
        site_error_log=collections.Counter(r["exc"] for r in result["retried"]),
        final=collections.Counter(f["exc"] for f in result["tries"] if not f["retry"]),
        by_class=conflicts_by_class, by_object=conflicts_by_object, by_request=conflicts_by_request,
        stall=max(result["stalls"]) if result["stalls"] else 0.0, stalls=result["stalls"],
        tracebacks=result["tracebacks"], startup=result["startup"], **content,
    )


def describe(s: dict) -> str:
    lines = ["round %d %s: wall %.2fs, %d requests, latency p50 %.3fs p95 %.3fs, HTTP 500 %d, other errors %d"
             % (s["number"], s["mode"], s["wall"], s["requests"], s["p50"], s["p95"], s["http500"],
                s["other_errors"])]
    lines.append("  per op (n, p50, p95): " + ", ".join(
        "%s %d %.3fs %.3fs" % (op, *s["ops"][op]) for op in OPS if op in s["ops"]))
    lines.append("  retries: %s; failed last tries: %s (SiteErrorLog's INFO lines: %s)" % (
        ", ".join("%s %d" % kv for kv in sorted(s["retried"].items())) or "none",
        ", ".join("%s %d" % kv for kv in sorted(s["final"].items())) or "none",
        ", ".join("%s %d" % kv for kv in sorted(s["site_error_log"].items())) or "none"))
    if s["by_class"]:
        lines.append("  conflicts by object class:")
        for (exc, kind), n in s["by_class"].most_common():
            lines.append("    %4d  %-13s %s" % (n, exc, kind))
        lines.append("  conflicts by object:")
        for (exc, name), n in s["by_object"].most_common(12):
            lines.append("    %4d  %-13s %s" % (n, exc, name))
        lines.append("  conflicts by request:")
        for (exc, method, path), n in s["by_request"].most_common():
            lines.append("    %4d  %-13s %-6s %s" % (n, exc, method, path))
    lines.append("  content: folder %(folder)d, catalog %(catalog)d under the folder; lost %(lost_folder)d "
                 "(folder) %(lost_catalog)d (catalog), duplicated %(duplicated)d, extra %(extra_folder)d "
                 "(folder) %(extra_catalog)d (catalog), UID mismatches %(uid_mismatch)d, ordering %(order)s"
                 % dict(s, order="ok" if s["ordering_ok"] else "BROKEN"))
    lines.append("  longest time an instance completed no request while one was outstanding: %s; "
                 "tracebacks in the logs: %d; start-up %s" % (
                     ", ".join("%.2fs" % x for x in s["stalls"]), s["tracebacks"],
                     ", ".join("%s %.1fs" % kv for kv in s["startup"].items())))
    return "\n".join(lines)


def table(summaries: list[dict]) -> None:
    print("\n| round | mode | wall s | p50 s | p95 s | HTTP 500 | ConflictError retries | LockBusy retries "
          "| lost | duplicated | extra | longest stall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print("| %d | %s | %.2f | %.3f | %.3f | %d | %d | %d | %d | %d | %d | %.2f |" % (
            s["number"], s["mode"], s["wall"], s["p50"], s["p95"], s["http500"], s["retried"].get("ConflictError", 0),
            s["retried"].get("LockBusy", 0), s["lost_folder"] + s["lost_catalog"], s["duplicated"],
            s["extra_folder"] + s["extra_catalog"], s["stall"]))
    pairs = [(a, b) for a, b in zip(summaries, summaries[1:], strict=False)
             if a["mode"] == "unpatched" and b["mode"] == "patched" and b["number"] == a["number"] + 1]
    if pairs:
        print("\n| pair | wall ratio patched/unpatched | p50 ratio | p95 ratio | HTTP 500 unpatched -> patched |")
        print("|---|---|---|---|---|")
        for n, (a, b) in enumerate(pairs, 1):
            print("| %d | %.2f | %.2f | %.2f | %d -> %d |" % (n, b["wall"] / a["wall"], b["p50"] / a["p50"],
                                                            b["p95"] / a["p95"], a["http500"], b["http500"]))
        print("median wall ratio: %.2f" % statistics.median(b["wall"] / a["wall"] for a, b in pairs))


# -- --trace: what the transactions wrote, where the lock was taken ------------------------------------------------

def trace_report(results: list[dict]) -> None:
    for result in results:
        traces = result["traces"]
        if not traces:
            continue
        print("\ntrace of round %d (%s): %d transaction attempts" % (result["number"], result["mode"], len(traces)))
        names = result["state"].get("names", {})
        adds = committed_adds(traces)
        if adds:
            print("  committed document adds: %d; objects stored per add: median %d" % (
                len(adds), statistics.median(sum(len(s["objects"]) for s in t["stored"]) for t in adds)))
            per_class = collections.Counter()
            for t in adds:
                for stored in t["stored"]:
                    for _oid, kind, new in stored["objects"]:
                        per_class[(kind.split(" ")[0], "new" if new else "changed")] += 1
            print("  objects per add, by class (average):")
            for (kind, how), n in sorted(per_class.items(), key=lambda kv: -kv[1]):
                print("    %6.2f  %-7s %s" % (n / len(adds), how, kind))
            spots = hot_spots(traces)
            every = [(oid, kind) for oid, n, kind in spots if n == len(adds)]
            print("  existing objects written by every one of the %d adds: %d; by at least half: %d" % (
                len(adds), len(every), len(spots)))
            catalog = collections.Counter()
            for oid, n, kind in spots:
                name = names.get(oid, kind)
                match = re.match(r"/Plone/portal_catalog\._catalog\.indexes\['([^']+)'\]", name)
                if match:
                    catalog[(match.group(1), n == len(adds))] += 1
                    continue
                print("    %3d/%d  %s  %s" % (n, len(adds), oid, name))
            if catalog:
                print("    and portal_catalog index objects (BTrees, Length counters, the IITreeSets of the "
                      "values added), by index: %s" % ", ".join(
                          "%s %d%s" % (index, n, "" if every_add else " (not every add)")
                          for (index, every_add), n in sorted(catalog.items())))
        locked = [t for t in traces if t.get("lock")]
        if locked:
            sites = collections.Counter()
            examples = {}
            changed = collections.Counter()
            used = collections.Counter()
            for t in locked:
                stack = [f for f in t["lock"]["stack"] if "memcachedlock" not in f and "plonesite" not in f]
                site = " <- ".join(f.split(" ")[-1] + " (" + f.split(" ")[0].rsplit("/", 1)[-1] + ")"
                                   for f in reversed(stack[-8:]))
                sites[site] += 1
                examples.setdefault(site, t)
                for _, kind in t["lock"].get("changed_before", []):
                    how = re.search(r"\((savepoint|readCurrent)\)$", kind)
                    changed[kind.split(" ")[0] + (" (%s)" % how.group(1) if how else "")] += 1
                for kind, n in t["lock"].get("used_before", {}).get("by_class", {}).items():
                    used[kind] += n
            print("  where the transactions first asked for the zlock (innermost first), %d of them:" % len(locked))
            for site, n in sites.most_common(6):
                print("    %4d  %s" % (n, site))
            for site, _ in sites.most_common(2):
                example = examples[site]
                print("  a full stack of the %s (%s %s):" % ("most common site" if _ == sites.most_common(1)[0][1]
                                                             else "next site", example["method"], example["path"]))
                for frame in example["lock"]["stack"]:
                    if "threading.py" not in frame and "waitress/" not in frame:
                        print("      " + frame)
            print("  objects already changed (since the last savepoint, in a savepoint, or passed to readCurrent) "
                  "before the first zlock call, by class (total over %d transactions):" % len(locked))
            for kind, n in changed.most_common(25):
                print("    %5d  %s" % (n, kind))
            print("  objects already used (loaded or touched) before it, by class (average per transaction):")
            for kind, n in used.most_common(15):
                print("    %7.1f  %s" % (n / len(locked), kind))
        failed = [t for t in traces if t["outcome"] == "commit failed"]
        if failed:
            print("  commits that failed (%d), by error, the transaction's zlock at commit (held: since the call; "
                  "at-commit: ran optimistically, lock taken at commit; gate: passed the commit gate optimistically; "
                  "none), request and object:" % len(failed))
            kinds = collections.Counter()
            for t in failed:
                error = t.get("error", "?")
                oid = plonesite.conflict_object(error)[0]
                how = lock_how(t)
                kinds[(error.split(":")[0], fold_doc(names.get(oid) or conflict_kind(error, {})), how,
                       t["method"], fold_path(t["path"] or "?"))] += 1
            for (exc, what, how, method, path), n in kinds.most_common(20):
                print("    %4d  %-17s %-5s %-6s %-40s %s" % (n, exc, how, method, path, what))
            explain_locked_failures(failed, traces, names)
        busy = [b for t in traces for b in t.get("busy", [])]
        if busy:
            why = collections.Counter()
            for b in busy:
                reason = b["message"].split(" and ", 1)[-1].split("; retry")[0]
                reason = re.sub(r" \(oid [^)]*\)", "", reason)
                what = fold_doc(names.get(b.get("oid"), b.get("object", "-"))) if b.get("oid") else "-"
                why[(what, "changed before the lock" if b.get("changed_before") else
                     "used before the lock" if b.get("used_before") else "not changed/used before", reason)] += 1
            print("  LockBusy met in the lock call: %d (object named, whether the transaction had changed or "
                  "used it before asking for the lock, reason)" % len(busy))
            for (what, where, reason), n in why.most_common():
                print("    %4d  %s [%s] %s" % (n, what, where, reason))
            print("  every object a newer commit had changed that the LockBusy transaction had changed (C), used (U) "
                  "or held in memory (M) when it asked for the lock, in how many of the %d LockBusy:" % len(busy))
            blockers = collections.Counter()
            for b in busy:
                for key, tag in (("blocking_changed", "C"), ("blocking_used", "U"), ("blocking_in_memory", "M")):
                    for oid, kind in b.get(key, []):
                        blockers[(tag, fold_doc(names.get(oid) or kind))] += 1
            for (tag, what), n in blockers.most_common(30):
                print("    %4d  %s %s" % (n, tag, what))


def lock_how(t: dict) -> str:
    """How a traced transaction held the catalog's zlock when it committed."""
    state = t.get("locks_at_commit") or {}
    if state.get("held"):
        return "at-commit" if set(state["held"]) & set(state.get("pending", ())) else "held"
    return "gate" if state.get("passes") else "none"


def explain_locked_failures(failed: list[dict], traces: list[dict], names: dict) -> None:
    """For a commit that failed while holding the zlock: the commits of the object it conflicted on after its view.

    Each is shown with its zlock at commit and whether its tid was in the
    note the failed transaction read with the lock (if it was, the lock
    should have caught it).
    """
    committed = [t for t in traces if t["outcome"] == "committed" and t.get("tid")]
    shown_failures = 0
    for t in failed:
        oid = plonesite.conflict_object(t.get("error", ""))[0]
        if lock_how(t) != "held" or not oid or not t.get("view") or shown_failures >= 5:
            continue
        shown_failures += 1
        notes = [tid for note in (t.get("notes") or {}).values() for tid in note.values()]
        print("    failed holding the lock since the call: %s %s on instance %d, view %s, note read with the lock "
              "%s, conflict on %s; the commits of that object after the view, before the failure:" % (
                  t["method"], t["path"], t["instance"], t["view"], t.get("notes"), names.get(oid, oid)))
        for c in committed:
            if (c["tid"] >= t["view"] and c["end"] <= t["end"]
                    and any(o == oid for s in c["stored"] for o, _, _ in s["objects"])):
                print("      tid %s (instance %d %s %s, zlock %s; %s the note's tids)" % (
                    c["tid"], c["instance"], c["method"], fold_path(c["path"] or "?"), lock_how(c),
                    "within" if any(c["tid"] <= n for n in notes) else "after"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="HTTP client threads")
    parser.add_argument("--docs", type=int, default=25, help="documents per client")
    parser.add_argument("--ops", default="add", help="comma-separated, of: " + ",".join(OPS))
    parser.add_argument("--delete-every", dest="delete_every", type=int, default=2,
                        help="with delete: one document in this many is deleted")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: unpatched, patched")
    parser.add_argument("--pairs", type=int, default=1, help="rounds of every mode, alternating")
    parser.add_argument("--instances", type=int, default=2, help="Zope processes")
    parser.add_argument("--threads", type=int, default=2, help="waitress threads per Zope process")
    parser.add_argument("--servers", default=None, help="memcached servers (default: start one)")
    parser.add_argument("--store", choices=("fallback", "memcached"), default="fallback",
                        help="the patched rounds' lock store (default fallback: a site's unless it sets one)")
    parser.add_argument("--trace", action="store_true", help="record and print what transactions wrote and locked")
    parser.add_argument("--keep", action="store_true", help="keep every round's directory (logs, Data.fs)")
    parser.add_argument("--json", default=None, help="also write every round's summary to this file")
    args = parser.parse_args(argv)
    for name in ("clients", "docs", "pairs", "instances", "threads", "delete_every"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1, not %r" % (name.replace("_", "-"), getattr(args, name)))
    args.ops = tuple(op for op in args.ops.split(",") if op)
    if "add" not in args.ops or set(args.ops) - set(OPS):
        parser.error("--ops must include add and name only %s" % ", ".join(OPS))
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error("--modes: unpatched and/or patched")
    server = None
    servers = args.servers
    if servers is None and "patched" in modes:
        from unimr.memcachedlock.tools.servers import MemcachedServer

        server = MemcachedServer().start()
        servers = server.address
    started = time.monotonic()
    data_fs = plonesite.template()
    print("%d Zope processes x %d threads, %d clients x %d documents, ops %s; Plone site template ready in %.1fs"
          % (args.instances, args.threads, args.clients, args.docs, ",".join(args.ops), time.monotonic() - started),
          flush=True)
    results, summaries = [], []
    try:
        number = 0
        for _ in range(args.pairs):
            for mode in modes:
                number += 1
                result = run_round(mode, args, servers, data_fs, number)
                summary = summarise(result)
                print(describe(summary), flush=True)
                results.append(result)
                summaries.append(summary)
    finally:
        if server is not None:
            server.kill()
    table(summaries)
    if args.trace:
        trace_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(s, retried=dict(s["retried"]), final=dict(s["final"]),
                            site_error_log=dict(s["site_error_log"]),
                            by_class=[[list(k), n] for k, n in s["by_class"].items()],
                            by_object=[[list(k), n] for k, n in s["by_object"].items()],
                            by_request=[[list(k), n] for k, n in s["by_request"].items()]) for s in summaries],
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
