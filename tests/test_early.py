"""Learned early locks (``early.py``): requests that redo their work at a lock take it when they begin.

The rule is tested on its own first (learning, forgetting, bounds), then on
a real ZODB with threads: a transaction that changes a hot object before the
zlocked call meets LockBusy once, its kind learns the lock, and the next
transactions of that kind take it when they begin and are not retried.  The
Zope publisher's part is tested with real Zope processes in test_zope.py.
"""

from __future__ import annotations

import threading

import pytest
import transaction
import ZODB
from ZODB.MappingStorage import MappingStorage

from unimr.memcachedlock.decorators import function_prefix
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.zodb import LockBusy, early, lock_early, zlock

from counters import Counter


def test_a_label_learns_a_lock_and_forgets_it_every_forget_every_transactions():
    early.begin("POST /site/folder")
    assert early.learn("catalog", "request") is True
    assert early.learn("catalog", "request") is False  # learned once
    early.begin(None)
    assert early.learn("other", "request") is False  # no label: nothing learned
    takes = [early.to_take("POST /site/folder") for _ in range(early.FORGET_EVERY)]
    assert takes[: early.FORGET_EVERY - 1] == [[("catalog", "request")]] * (early.FORGET_EVERY - 1)
    assert takes[-1] == [] and early.learned("POST /site/folder") == []
    assert early.to_take("GET /never/retried") == []


def test_other_documents_of_a_folder_learn_from_one_through_the_family():
    """Each document is edited rarely; its siblings meet the same lock: the family label carries it."""
    assert early.family("PATCH /site/folder/doc-1") == "PATCH /site/folder/*"
    assert early.family("POST /site/folder") == "POST /site/*"
    assert early.family("POST /site") is None and early.family("GET /") is None  # never everything at once
    assert early.family("PATCH /site/folder/*") is None
    early.begin("PATCH /site/folder/doc-1")
    assert early.learn("catalog", "request") is True
    assert early.to_take("PATCH /site/folder/doc-2") == [("catalog", "request")]
    assert early.to_take("PATCH /site/other/doc-2") == []
    assert early.to_take("GET /site/folder/doc-2") == []


def test_a_transition_of_one_document_teaches_the_same_transition_of_its_siblings():
    """The object a request names is the last segment that is not a view or a namespace traversal."""
    assert early.family("POST /site/folder/doc-1/@workflow/publish") == "POST /site/folder/*/@workflow/publish"
    assert early.family("POST /site/folder/doc-1/@@edit") == "POST /site/folder/*/@@edit"
    assert early.family("GET /site/++resource++x/@@view") is None  # only the root names an object
    assert early.family("POST /site/@workflow/publish") is None
    assert early.family("PATCH /site/++api++/folder/doc-1") == "PATCH /site/++api++/folder/*"
    early.begin("POST /site/folder/doc-1/@workflow/publish")
    assert early.learn("catalog", "request") is True
    assert early.to_take("POST /site/folder/doc-2/@workflow/publish") == [("catalog", "request")]
    assert early.to_take("POST /site/folder/doc-2/@workflow/retract") == []


def test_labels_and_their_locks_are_bounded():
    for n in range(early.MAX_LABELS + 10):
        early.begin("POST /f%d" % n)
        early.learn("catalog", n)
    assert early.learned("POST /f0") == []  # the least recently used were forgotten
    assert early.learned("POST /f%d" % (early.MAX_LABELS + 9)) == ["catalog"]
    early.begin("POST /many")
    for n in range(early.MAX_LOCKS_PER_LABEL + 3):
        early.learn("lock-%02d" % n, n)
    assert len(early.learned("POST /many")) == early.MAX_LOCKS_PER_LABEL


@pytest.fixture
def db(store):
    transaction.abort()
    database = ZODB.DB(MappingStorage())
    with database.transaction() as conn:
        conn.root()["hot"] = Counter()
        conn.root()["counted"] = Counter()
    yield database
    transaction.abort()
    early.begin(None)
    database.close()


@zlock(lambda fun, root: "counted")
def count(root) -> None:
    root["counted"].n += 1


def add_like_plone(conn, label: str, hold: threading.Event | None = None) -> None:
    """One transaction of kind ``label``: change the hot object (Plone's uid generator), then the locked call."""
    transaction.begin()
    lock_early(label)
    conn.root()["hot"].n += 1
    count(conn.root())
    if hold is not None:
        hold.wait(10)
    transaction.commit()


def test_a_kind_of_transaction_retried_after_its_changes_takes_the_lock_when_it_begins_next_time(db):
    conn = db.open()
    label = "POST /site/folder"
    add_like_plone(conn, label)  # the thread's first zlock transaction: its views are watched from the next on
    transaction.begin()
    lock_early(label)
    conn.root()["hot"].n += 1  # changed before the lock ...
    other = db.open(transaction_manager=transaction.TransactionManager())
    with other.transaction_manager:
        other.root()["hot"].n += 1  # ... and by another client's commit under the lock
        count(other.root())
    with pytest.raises(LockBusy):
        count(conn.root())
    transaction.abort()
    assert early.learned(label) == [lock_name(function_prefix(count.__wrapped__) + "counted")]
    transaction.begin()
    assert lock_early(label) == 1  # taken before anything is used: the retry does its work once
    conn.root()["hot"].n += 1
    count(conn.root())
    transaction.commit()
    assert lock_early("GET /site/folder") == 0
    transaction.abort()
    other.close()
    conn.close()


def test_threads_of_a_learned_kind_wait_at_the_begin_instead_of_redoing_their_work(db):
    """4 threads x 10 transactions that change the hot object before the locked call: without early
    locks nearly every one would be retried after its changes; with them, few are, and nothing is lost."""
    retried = []

    def worker() -> None:
        conn = db.open()
        for _ in range(10):
            while True:
                try:
                    add_like_plone(conn, "POST /site/folder")
                    break
                except LockBusy:
                    transaction.abort()
                    retried.append(True)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with db.transaction() as conn:
        assert conn.root()["hot"].n == conn.root()["counted"].n == 40
    # a thread's first transaction (its view is not watched yet) and the turns that forget: a few at most
    assert len(retried) <= 12, len(retried)  # 32 of them without early locks
