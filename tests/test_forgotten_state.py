"""What the lock store forgets costs a retry, never an entry (docs/safety.rst, "What a store can forget").

A missing note, or a missing entry in one, reads exactly like one never
written: zlock must read it as "unknown".  The rules first (pure functions),
then the issue's scenario on a real ZEO server and a real memcached: an
exclusive writer (policy ``always``) replaces a BTree and commits; the lock
store forgets the note (eviction under memory pressure, or a restart); an
optimistic commit (policy ``on-conflict``) whose view began before the
writer's commit must not land in the replaced BTree.  Last, the commit
gate's counter forgotten by a restart while a commit that passed it is still
running: the next holder must wait for that commit.
"""

from __future__ import annotations

import threading
import time

import pytest
import transaction
import ZEO
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from pymemcache.client.base import Client
from ZODB.MappingStorage import MappingStorage

from unimr.memcachedlock import registry
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.zodb import lock_for_transaction
from unimr.memcachedlock.zodb.notes import (
    EXCLUSIVE,
    FRESH,
    MAX_NOTE_ENTRIES,
    SINCE,
    STALE,
    UNKNOWN,
    commits_since,
    decode_note,
    encode_entries,
    exclusive_commits_since,
    merge_note,
    with_since,
)

from clients import in_another_client
from servers import MemcachedServer

KEY = "forgotten-note"


def tid(n: int) -> bytes:
    return n.to_bytes(8, "big")


# ---- the reading rules --------------------------------------------------------------------------------

S = "zeo:('127.0.0.1', 8100):1"

RULES = [
    # note, view, commits_since, exclusive_commits_since
    ({}, 10, (UNKNOWN, None), (UNKNOWN, None)),                                  # forgotten or never written
    ({S: tid(5)}, 10, (FRESH, None), (FRESH, None)),                             # the note reaches back: nothing since
    ({S: tid(12)}, 10, (STALE, tid(12)), (UNKNOWN, None)),                       # a commit since; exclusive? unknown
    ({S: tid(12), SINCE + S: tid(12)}, 10, (STALE, tid(12)), (UNKNOWN, None)),   # recorded only from 12 on
    ({S: tid(12), SINCE + S: tid(3)}, 10, (STALE, tid(12)), (FRESH, None)),      # recorded since 3: not exclusive
    ({S: tid(12), EXCLUSIVE + S: tid(11)}, 10, (STALE, tid(12)), (STALE, tid(11))),
    ({S: tid(12), EXCLUSIVE + S: tid(4)}, 10, (STALE, tid(12)), (FRESH, None)),  # exclusive entry reaches back
    ({SINCE + S: tid(6)}, 10, (FRESH, None), (FRESH, None)),                     # untouched by locked commits since 6
    ({SINCE + S: tid(10)}, 10, (FRESH, None), (FRESH, None)),
    ({SINCE + S: tid(11)}, 10, (UNKNOWN, None), (UNKNOWN, None)),               # recorded from after the view only
    ({"zeo:other": tid(1)}, 10, (UNKNOWN, None), (UNKNOWN, None)),              # another storage says nothing of this
]


@pytest.mark.parametrize("note, view, plain, exclusive", RULES)
def test_an_entry_tells_what_happened_since_it_was_written_and_nothing_else(note, view, plain, exclusive):
    assert commits_since(note, S, tid(view)) == plain
    assert exclusive_commits_since(note, S, tid(view)) == exclusive


def test_since_entries_keep_the_first_tid_and_are_written_once():
    assert decode_note(b" %s %s" % (encode_entries({SINCE + S: tid(9)}), encode_entries({SINCE + S: tid(4)}))) == {
        SINCE + S: tid(4)}
    assert with_since({}, {S: tid(7), EXCLUSIVE + S: tid(7)}, {"zeo:b": tid(3)}) == {
        S: tid(7), EXCLUSIVE + S: tid(7), SINCE + S: tid(7), SINCE + "zeo:b": tid(3)}
    assert with_since({SINCE + S: tid(2)}, {S: tid(7)}) == {S: tid(7)}
    assert merge_note({SINCE + S: tid(2)}, {SINCE + S: tid(7)}) == {SINCE + S: tid(2)}


def test_a_bounded_note_drops_whole_storages():
    """An entry dropped alone would lie (a storage's last commit gone while its ``since`` stays)."""
    old = {}
    for n in range(20):
        old.update({"zeo:%d" % n: tid(50), SINCE + "zeo:%d" % n: tid(1)})
    merged = merge_note(old, {"zeo:new": tid(60), SINCE + "zeo:new": tid(60)})
    assert len(merged) <= MAX_NOTE_ENTRIES
    for name in merged:
        identity = name[len(SINCE):] if name.startswith(SINCE) else name
        assert identity in merged and SINCE + identity in merged, name
    assert "zeo:new" in merged and "zeo:0" not in merged  # the oldest storage went first


# ---- the scenario on real ZEO ------------------------------------------------------------------


def exclusive_writer_replaces_the_tree(address) -> None:
    """A policy-always writer replaces the BTree (as manage_catalogClear does), in a client of its own."""
    def work(root) -> None:
        assert lock_for_transaction(KEY) is True
        root["site"]["tree"] = OOBTree({"a": 1})

    in_another_client(address, work)


def optimistic_entry(address, forget) -> tuple[int, list[str]]:
    """An optimistic commit whose view began before the writer's; ``forget()`` runs between. (tries, keys)."""
    db = ZEO.DB(address)
    with db.transaction() as conn:
        conn.root()["site"] = PersistentMapping(tree=OOBTree({"a": 1}))
    conn = db.open()
    tries = 0
    try:
        for attempt in transaction.manager.attempts(4):
            with attempt:
                tries += 1
                tree = conn.root()["site"]["tree"]
                assert "a" in tree                  # this transaction's view: the tree before the writer's
                if tries == 1:
                    exclusive_writer_replaces_the_tree(address)
                    forget()
                assert lock_for_transaction(KEY, policy="on-conflict") is True
                tree["y"] = 1
        with db.transaction() as check:
            return tries, sorted(check.root()["site"]["tree"].keys())
    finally:
        transaction.abort()
        conn.close()
        db.close()


def note_of(server: MemcachedServer) -> bytes | None:
    client = Client(("127.0.0.1", server.port), timeout=5)
    try:
        return client.get(("memcachedlock:" + lock_name(KEY) + "#note").encode("ascii"))
    finally:
        client.close()


@pytest.fixture(params=["memcached", "fallback"])
def small_memcached(request, lock_dir, monkeypatch):
    """A memcached of 2 MB of the test's own (evicts under pressure), behind the memcached or the fallback store."""
    extra = getattr(request, "param_extra", ())
    with MemcachedServer(memory_mb=2, extra=extra) as server:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", server.address)
        monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", request.param)
        registry.reset()
        yield server
        registry.reset()


def evict(server: MemcachedServer) -> None:
    assert note_of(server) is not None
    server.fill()
    assert note_of(server) is None, "the pressure did not evict the note"


def restart(server: MemcachedServer) -> None:
    assert note_of(server) is not None
    server.restart()
    registry.get_backend()  # the store reconnects on its own; nothing else is done for it


@pytest.mark.slow
@pytest.mark.parametrize("fault", [evict, restart], ids=["evicted", "restarted"])
def test_an_optimistic_entry_survives_a_forgotten_note(small_memcached, zeo_server, fault):
    """Without the note the optimistic commit cannot know of the writer's commit: it takes the lock, asks
    ZEO, finds a commit newer than its view, and retries -- one retry, no entry lost."""
    tries, keys = optimistic_entry(zeo_server.address, lambda: fault(small_memcached))
    assert keys == ["a", "y"]
    assert tries == 2


@pytest.mark.slow
def test_the_note_lives_through_pressure_with_temporary_ttl(zeo_server, lock_dir, monkeypatch):
    """Notes are kept at most ``-o temporary_ttl=3600``: such a server never evicts one."""
    with MemcachedServer(memory_mb=2, extra=("-o", "temporary_ttl=3600")) as server:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", server.address)
        monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
        registry.reset()

        def pressure() -> None:
            server.fill()
            assert int(server.stats()["evictions"]) > 1000 and note_of(server) is not None

        tries, keys = optimistic_entry(zeo_server.address, pressure)
        registry.reset()
    assert keys == ["a", "y"] and tries == 2


# ---- the commit gate's counter, forgotten while a commit that passed it runs -------------------------


class SlowVote:
    """A data manager whose vote waits until ``release`` is set."""

    def __init__(self, voting: threading.Event, release: threading.Event) -> None:
        self.voting, self.release = voting, release
        self.transaction_manager = transaction.manager

    def sortKey(self) -> str:
        return "~slow-vote"

    def tpc_vote(self, txn) -> None:
        self.voting.set()
        self.release.wait(10)

    def tpc_begin(self, txn) -> None:
        """Nothing to do."""

    def commit(self, txn) -> None:
        """Nothing to do."""

    def tpc_finish(self, txn) -> None:
        """Nothing to do."""

    def tpc_abort(self, txn) -> None:
        """Nothing to do."""

    def abort(self, txn) -> None:
        """Nothing to do."""


@pytest.mark.slow
def test_a_holder_after_a_restart_waits_for_a_commit_that_passed_the_gate_before_it(private_memcached):
    """The restart forgets the counter that would make the holder wait; the holder, finding neither
    counter nor note on a server just restarted, waits for such commits anyway and then sees the entry."""
    db = ZODB.DB(MappingStorage())
    with db.transaction() as conn:
        conn.root()["site"] = PersistentMapping(tree=OOBTree({"a": 1}))
    voting, release, began = threading.Event(), threading.Event(), threading.Event()
    outcome: list = []

    def optimistic() -> None:
        conn = db.open()
        try:
            with transaction.manager:
                assert lock_for_transaction(KEY, policy="on-conflict") is True
                conn.root()["site"]["tree"]["y"] = 1
                transaction.get().join(SlowVote(voting, release))
        finally:
            conn.close()

    def holder() -> None:
        """Policy always: rebuilds the tree from what its view holds (as refreshCatalog does)."""
        conn = db.open()
        try:
            for attempt in transaction.manager.attempts(4):
                with attempt:
                    began.set()
                    assert lock_for_transaction(KEY, timeout=10) is True
                    site = conn.root()["site"]
                    site["tree"] = OOBTree(site["tree"])
            outcome.append("committed")
        except Exception as exc:  # reported below
            outcome.append(repr(exc))
        finally:
            conn.close()

    committer = threading.Thread(target=optimistic)
    committer.start()
    assert voting.wait(10)                  # it has passed the gate and is in its vote
    private_memcached.restart()             # counter gone, note gone
    started = time.monotonic()
    rebuild = threading.Thread(target=holder)
    rebuild.start()
    assert began.wait(10)                   # the holder's view began before the optimistic commit ends
    threading.Timer(1.0, release.set).start()
    rebuild.join(30)
    committer.join(30)
    assert outcome == ["committed"]
    with db.transaction() as conn:
        assert sorted(conn.root()["site"]["tree"].keys()) == ["a", "y"]
    assert time.monotonic() - started >= 1.5  # it waited (DRAIN_WAIT) for the commit it could not count
    db.close()


# ---- a waiter's record --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_waiter_whose_record_is_forgotten_gets_the_key_at_its_next_poll(private_memcached, monkeypatch):
    """A restart forgets the lock and the waiter's record: nobody hands the key over, the waiter polls.

    The restart itself is a short outage: a poll that meets it gets BackendUnavailable (the memcached
    store), and the caller tries again, as a site's code does.
    """
    from unimr.memcachedlock import Lock
    from unimr.memcachedlock.errors import BackendUnavailable

    monkeypatch.setenv("MEMCACHEDLOCK_RETRY", "0.1")  # a down server is tried again after 0.1 s
    registry.reset()
    held = Lock("waited-for", timeout=10)
    assert held.acquire(blocking=False)
    got: list = []

    def waiter() -> None:
        waiting = Lock("waited-for", timeout=10, interval=0.05)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                if waiting.acquire(timeout=deadline - time.monotonic()):
                    got.append(time.monotonic())
                    waiting.release()
                    return
            except BackendUnavailable:
                time.sleep(0.05)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)                             # it waits, its record written
    private_memcached.restart()
    restarted = time.monotonic()  # the server answers again (its start-up is not the waiter's to count)
    thread.join(10)
    # a down server is tried again after 0.1 s, a poll comes every 0.05 s: 1.5 s is ten times what the waiter
    # needs; a waiter that missed the restart would wait for the old holder's 10 s lease (or its 8 s deadline)
    assert got and got[0] - restarted < 1.5, got
    deadline = time.monotonic() + 3
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.lost                            # the old holder is told (renewal within 2 s)
