"""Real Zope WSGI instances on a real ZEO server, with the site-level configure.zcml loaded.

Each instance is its own process (Zope's ``make_wsgi_app`` behind waitress, see
``zopeinstance.py``); requests go over HTTP on loopback, so every retry runs
through ``ZPublisher.WSGIPublisher.publish_module`` as in production.
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from zopeinstance import ZopeInstance

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import publisher_contention


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
    # uniform(0,1) + uniform(0,2) + uniform(0,4) s: below 0.1 s with probability 2e-5, below 0.3 s with 5.6e-4
    # (the odds that delayed LockBusy retries would go unnoticed; 0.3 s gives a loaded machine room for three
    # retries of a view that does nothing).
    assert busy[-1] - busy[0] < 0.3, busy
    assert busy_took < 3.0  # the whole request: the attempts' stamps above are the check, this says nothing hung
    assert conflict[-1] - conflict[0] > 0.1, conflict
    # SiteErrorLog's lines for the LockBusy retries go to DEBUG; one INFO summary says what was retried.
    assert retried(log, "LockBusy", "/@@mcl-raise") == 0
    assert len(re.findall(r"DEBUG Zope\.SiteErrorLog LockBusy at /@@mcl-raise: .*will be retried", log)) == 3
    assert retried(log, "ConflictError", "/@@mcl-raise") == 3
    assert re.search(r"INFO unimr\.memcachedlock\.zope\.conflicts 1 retried or failed requests since the last "
                     r"summary \(1 of them LockBusy: .*\); most on: LockBusy 'test' \(1\)", log), log


@pytest.mark.slow
def test_requests_that_change_a_hot_object_before_the_catalog_learn_to_lock_when_they_begin(memcached):
    """As a Plone add: each request changes a shared counter, then catalogs at commit.  The lock cannot
    move such a waiter's view, so the first of them are retried after their work (LockBusy); then the
    requests of that kind take the lock when they begin.  Without that every waiter was retried."""
    result = publisher_contention.run_once("patched", 2, 2, 8, 20.0, "cmfcore", memcached.address, hot=True)
    assert result["failed"] == 0 and result["tracebacks"] == 0, result
    assert result["missing"] == 0 and result["unexpected"] == 0 and result["entries"] == result["documents"], result
    assert result["hot"] == result["documents"] == 32, result  # the counter lost no increment
    assert result["conflicts"] == 0, result
    assert result["busy"] <= 10, result  # 25-32 without early locks


@pytest.mark.slow
def test_conflicts_are_counted_by_object_class_and_request_and_listed_by_stats(memcached, zeo_server, tmp_path):
    """Real ConflictErrors (another connection commits the same object first) and LockBusy retries are
    counted per process, written to the metrics directory, and ``memcachedlock stats`` lists them."""
    import io

    from unimr.memcachedlock import metrics
    from unimr.memcachedlock.tools import cli

    directory = str(tmp_path / "metrics")
    env = dict(lock_env(memcached), MEMCACHEDLOCK_METRICS_DIR=directory, MEMCACHEDLOCK_METRICS_INTERVAL="0.2")
    with ZopeInstance(zeo_server.port, env=env) as zope:
        assert zope.get("/@@mcl-conflict?times=0&token=setup") == b"created"
        assert len(zope.json("/@@mcl-conflict?times=2&token=a")["attempts"]) == 3
        assert len(zope.json("/@@mcl-raise?kind=busy&times=1&token=b")["attempts"]) == 2
        expected = {"classes": [("LockBusy 'test'", 1, 0), ("counters.Counter", 2, 0)],
                    "requests": [("GET /@@mcl-conflict", 2, 0), ("GET /@@mcl-raise", 1, 0)]}
        deadline = time.monotonic() + 30
        while True:
            found = metrics.merge_conflicts(metrics.read_snapshots(directory))
            found = {table: sorted(rows) for table, rows in found.items()}
            if found == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert found == expected
    out = io.StringIO()
    assert cli.main(["stats", "--dir", directory], out=out) == 0
    text = out.getvalue()
    assert "ConflictErrors by object class (top 2 of 2)" in text, text
    assert re.search(r"counters\.Counter +2 +0", text), text
    assert re.search(r"GET /@@mcl-conflict +2 +0", text), text
    assert text.index("counters.Counter") < text.index("LockBusy 'test'"), text  # the most frequent first


@pytest.mark.slow
@pytest.mark.parametrize("path", ["plain", "cmfcore"])
def test_concurrent_catalog_requests_in_two_zope_processes(memcached, path):
    """2 Zope processes x 2 threads catalog 32 documents, directly or through CMFCore's queue (at commit).

    Policy always (the site default): catalog writes take turns and a waiter's
    view is moved forward once it holds the lock, so no catalog commit
    conflicts and catalog_object runs once per document; a LockBusy (a
    thread's first request, whose uses zlock does not know yet) comes before
    catalog_object runs.
    """
    result = publisher_contention.run_once("patched", 2, 2, 8, 3.0, path, memcached.address)
    assert result["failed"] == 0 and result["tracebacks"] == 0, result
    # Nothing lost, nothing twice.
    assert result["missing"] == 0 and result["unexpected"] == 0 and result["entries"] == result["documents"], result
    assert result["conflicts"] == 0 and result["runs"] == result["documents"], result
    assert result["busy"] <= 4, result  # 2 processes x 2 threads
