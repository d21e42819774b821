"""A real Plone 6 site with the catalog patch: documents written concurrently through plone.restapi.

``tests/plonesite.py`` stands the site up: Plone 6.2 with plone.restapi in a
ZEO server, two Zope processes (``runwsgi``, waitress with two threads each)
whose ``etc/package-includes`` slug includes the package's ``catalog.zcml``,
a memcached named in zope.conf's ``<environment>``.  Four HTTP clients, each
sending its requests to the two instances in turn, add five Documents each
into one folder, then edit, publish and delete some of them: every request
runs through Zope's publisher and its retries, as in production.  Nothing is
lost, nothing is there twice, and the folder and the catalog agree.

Not skipped when Plone is missing: the ``test`` extra installs it (the
``plone`` extra's pins).
"""

from __future__ import annotations

import collections
import threading

import pytest

import plonesite

CLIENTS = 4
DOCS = 5


def client(rest: plonesite.RestClient, number: int, start: threading.Event, done: dict) -> None:
    start.wait()
    ids = ["c%d-d%d" % (number, n) for n in range(DOCS)]
    added = [doc_id for doc_id in ids if rest.add(doc_id)]
    edited = added[:1] if rest.edit(added[0]) else []
    published = added[1:2] if rest.transition(added[1]) else []
    deleted = added[-1:] if rest.delete(added[-1]) else []
    done[number] = {"added": added, "edited": edited, "published": published, "deleted": deleted}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_documents_added_edited_and_deleted_through_restapi_in_two_patched_plone_instances(memcached):
    stores_before = int(memcached.stats()["cmd_set"])
    with plonesite.PloneCluster(instances=2, threads=2, patched=True, servers=memcached.address) as cluster:
        start = threading.Event()
        done: dict = {}
        rests = [plonesite.RestClient(cluster.urls, first=n) for n in range(CLIENTS)]
        threads = [threading.Thread(target=client, args=(rests[n], n, start, done)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join(180)
        for rest in rests:
            rest.close()
        state = cluster.inspect()
        log = cluster.logs()
    records = [r for rest in rests for r in rest.records]
    statuses = collections.Counter(r["status"] for r in records)
    failures = plonesite.failures(log)
    assert len(done) == CLIENTS, "a client thread did not finish"
    # Every request answered as plone.restapi answers success: no HTTP 500, nothing else.
    assert len(records) == CLIENTS * (DOCS + 3), records
    assert set(statuses) <= {200, 201, 204}, (statuses, [r for r in records if r["status"] >= 300], failures)
    assert not [f for f in failures if not f["retry"]], failures  # no request ran out of retries
    assert {r["instance"] for r in records} == {0, 1}
    # The patch was loaded and used: the catalog writes took their lock in memcached.
    assert int(memcached.stats()["cmd_set"]) > stores_before

    added = {d for c in done.values() for d in c["added"]}
    deleted = {d for c in done.values() for d in c["deleted"]}
    expected = added - deleted
    assert len(added) == CLIENTS * DOCS and len(deleted) == CLIENTS
    folder = {item["id"]: item for item in state["items"]}
    # 0 lost, 0 duplicated, nothing left behind by a delete: the folder holds exactly the expected documents.
    assert sorted(folder) == sorted(expected)
    assert state["folder_length"] == len(expected)
    assert sorted(state["order"]) == sorted(expected), state["order"]
    titles = collections.Counter(item["title"].replace(" (edited)", "") for item in state["items"])
    assert all(n == 1 for n in titles.values()), titles
    for c in done.values():
        for doc_id in c["edited"]:
            assert folder[doc_id]["title"] == doc_id + " (edited)"
    # Every document in the folder is in the catalog exactly once, under its path and its UID.
    paths = collections.Counter(entry["path"] for entry in state["entries"])
    assert sorted(paths) == sorted("%s/%s" % (plonesite.FOLDER_PATH, doc_id) for doc_id in expected), paths
    assert all(n == 1 for n in paths.values())
    by_path = {entry["path"]: entry for entry in state["entries"]}
    for doc_id, item in folder.items():
        entry = by_path["%s/%s" % (plonesite.FOLDER_PATH, doc_id)]
        assert item["uid"] and entry["uid"] == item["uid"], (item, entry)
        assert state["uid_rids"][item["uid"]] == entry["rid"]
    uids = collections.Counter(entry["uid"] for entry in state["entries"])
    assert all(n == 1 for n in uids.values()), uids
