"""uidgenerator.zcml: CMF's unique id generator under a zlock, with plain ZEO clients."""

from __future__ import annotations

import pytest
import transaction
import ZEO
from ZODB.POSException import ConflictError

from unimr.memcachedlock import metrics

from clients import in_another_client


@pytest.fixture
def uid_patch(memcached):
    """uidgenerator.zcml loaded; undone afterwards."""
    from zope.configuration import xmlconfig
    from zope.testing.cleanup import cleanUp

    import unimr.memcachedlock

    cleanUp()
    xmlconfig.file("uidgenerator.zcml", package=unimr.memcachedlock)
    yield memcached
    cleanUp()


def _one_uid_each(zeo_server) -> tuple[list[str], int]:
    """A transaction has the generator in memory, another client takes a uid, then the transaction takes one
    and does more work, retried on ConflictError as Zope would.  Returns how its tries went and its uid."""
    from Products.CMFUid.UniqueIdGeneratorTool import UniqueIdGeneratorTool

    db = ZEO.DB(zeo_server.address)
    conn = db.open()
    tries: list[str] = []
    try:
        tm = transaction.manager
        tm.begin()
        conn.root()["portal_uidgenerator"] = UniqueIdGeneratorTool()
        tm.commit()
        tm.begin()  # this thread's first zlock transaction: its views are watched from the next one on
        assert conn.root()["portal_uidgenerator"]() == 1
        tm.commit()
        metrics.reset()
        for _ in range(3):
            tm.begin()
            try:
                generator = conn.root()["portal_uidgenerator"]
                if not tries:
                    in_another_client(zeo_server.address, lambda root: root["portal_uidgenerator"]())
                uid = generator()
                tries.append("took %d" % uid)
                conn.root()["work"] = uid  # the request's work after it has its uid
                tm.commit()
                tries.append("committed")
                break
            except ConflictError as exc:
                tries.append(type(exc).__name__)
                tm.abort()
        tm.begin()
        assert conn.root()["portal_uidgenerator"]._uid_counter == 3
        tm.abort()
        return tries, uid
    finally:
        transaction.abort()
        conn.close()
        db.close()


def test_a_client_behind_another_is_retried_at_the_call_and_its_retry_holds_the_lock(uid_patch, zeo_server):
    """The generator's state in memory is older than the other client's uid: the call is retried at once
    (LockBusy, before the work that follows it), and the retry takes the next uid with the lock held."""
    tries, uid = _one_uid_each(zeo_server)
    assert tries == ["LockBusy", "took 3", "committed"] and uid == 3
    snapshot = metrics.snapshot()
    assert list(snapshot) == ["Products.CMFUid.UniqueIdGeneratorTool.UniqueIdGeneratorTool"]  # metrics by name
    assert sum(data["busy_retries"] for data in snapshot.values()) == 1


def test_unpatched_the_same_client_does_its_work_and_conflicts_at_commit(zeo_server):
    """What the file prevents: the generator's counter is a plain int, which ZODB cannot resolve, so the
    conflict comes at commit, after all the work, and the tries would go on conflicting under load."""
    tries, uid = _one_uid_each(zeo_server)
    assert tries == ["took 2", "ConflictError", "took 3", "committed"] and uid == 3
