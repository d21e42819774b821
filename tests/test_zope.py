"""Real Zope WSGI instances on a real ZEO server, with the site-level configure.zcml loaded.

Each instance is its own process (Zope's ``make_wsgi_app`` behind waitress, see
``zopeinstance.py``); requests go over HTTP on loopback, so every retry runs
through ``ZPublisher.WSGIPublisher.publish_module`` as in production.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import urllib.parse

import pytest

from zopeinstance import ZopeInstance


def lock_env(memcached) -> dict[str, str]:
    return {"MEMCACHEDLOCK_SERVERS": memcached.address, "MEMCACHEDLOCK_BACKEND": "memcached"}


def retried(log: str, exc: str, path: str) -> int:
    """How many retries Products.SiteErrorLog reported for ``exc`` at ``path``."""
    pattern = r"INFO Zope\.SiteErrorLog %s at %s: .*Request will be retried\." % (exc, re.escape(path))
    return len(re.findall(pattern, log))


@pytest.mark.slow
def test_reserved_lock_busy_is_retried_at_once_other_conflicts_back_off(memcached, zeo_server):
    with ZopeInstance(zeo_server.port, env=lock_env(memcached)) as zope:
        started = time.monotonic()
        busy = zope.json("/@@mcl-raise?kind=busy&times=3&token=b")["attempts"]
        busy_took = time.monotonic() - started
        conflict = zope.json("/@@mcl-raise?kind=conflict&times=3&token=c")["attempts"]
        log = zope.read("event.log")
    assert len(busy) == 4 and len(conflict) == 4
    # Three LockBusy retries (lock reserved for the retry) without Zope's delay; three ConflictError retries sleep
    # uniform(0,1) + uniform(0,2) + uniform(0,4) s: below 0.1 s with probability 2e-5.
    assert busy[-1] - busy[0] < 0.1, busy
    assert busy_took < 1.0
    assert conflict[-1] - conflict[0] > 0.1, conflict
    assert retried(log, "LockBusy", "/@@mcl-raise") == 3
    assert retried(log, "ConflictError", "/@@mcl-raise") == 3


@pytest.mark.slow
def test_concurrent_catalog_requests_in_two_zope_processes(memcached, zeo_server):
    instances = [ZopeInstance(zeo_server.port, threads=2, env=lock_env(memcached)) for _ in range(2)]
    docs_per_thread = 8
    errors: list[str] = []
    try:
        for zope in instances:
            zope.start()
        assert instances[0].get("/@@mcl-setup") == b"ok"

        def client(zope: ZopeInstance, name: str) -> None:
            for n in range(docs_per_thread):
                uid = "%s-%d" % (name, n)
                try:
                    body = zope.get("/@@mcl-index?" + urllib.parse.urlencode({"uid": uid, "work_ms": 3}))
                    if body != b"ok":
                        errors.append("%s: %r" % (uid, body[:200]))
                except Exception as exc:
                    errors.append("%s: %s" % (uid, exc))

        threads = [
            threading.Thread(target=client, args=(zope, "p%d-t%d" % (p, t)))
            for p, zope in enumerate(instances) for t in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        runs = sum(zope.json("/_mcl_stats")["runs"] for zope in instances)
        content = instances[1].json("/@@mcl-count")
        logs = "".join(zope.read("event.log") for zope in instances)
    finally:
        for zope in instances:
            zope.__exit__(None, None, None)
    expected = {"p%d-t%d-%d" % (p, t, n) for p in range(2) for t in range(2) for n in range(docs_per_thread)}
    assert errors == []
    # Nothing lost, nothing twice.
    assert set(content["uids"]) == expected
    assert content["entries"] == len(expected)
    # Policy always (the site default): catalog writes take turns and a waiter's view is moved
    # forward once it holds the lock, so no catalog commit conflicts and catalog_object runs once
    # per document; a LockBusy (a thread's first request, whose uses zlock does not know yet)
    # comes before catalog_object runs.
    assert retried(logs, "ConflictError", "/@@mcl-index") == 0
    assert runs == len(expected)
    assert retried(logs, "LockBusy", "/@@mcl-index") <= 4  # 2 processes x 2 threads
    assert "Traceback" not in logs


@pytest.mark.slow
def test_cmfcore_indexing_queue_through_the_publisher(memcached):
    """Plone's path through the real publisher: the queue catalogs inside commit(), the view moves there."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import publisher_contention

    result = publisher_contention.run_once("patched", 2, 2, 4, 3.0, "cmfcore", memcached.address)
    assert result["failed"] == 0 and result["missing"] == 0, result
    assert result["conflicts"] == 0 and result["wasted"] == 0, result
    assert result["busy"] <= 4, result  # each worker thread's first request at most
