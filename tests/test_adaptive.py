"""zlock policy ``adaptive``: locks a key while its writers meet, runs optimistically while they do not.

The rule is tested on its own (``KeyHistory``), then on a real ZEO server,
on every lock store, with client threads that each have a connection of their
own: a hot counter, which ZODB cannot reconcile, written by several
threads at once (sustained conflicts) and then by one (quiet).  Every
request gets Zope's 4 tries; the counts say what happened.
"""

from __future__ import annotations

import threading

import pytest
import transaction
import ZEO
from persistent.mapping import PersistentMapping
from test_zlock_policies import TRIES, publish, read_counter, run_threads, setup_counter

from unimr.memcachedlock import metrics
from unimr.memcachedlock.zodb import DEFAULT_POLICY, adaptive, zlock
from unimr.memcachedlock.zodb.adaptive import LOCKING, OPTIMISTIC, KeyHistory

HOT = "adaptive-counter"


@zlock(lambda fun, *args: HOT)
def increment(counter) -> None:
    """The hot counter's write (every test's adaptive history starts empty: see conftest)."""
    counter["value"] += 1


def test_a_key_starts_locked_and_is_freed_after_a_window_of_quiet_locked_transactions():
    history = KeyHistory()
    assert history.mode == LOCKING
    switched = [history.record(locked=True, met=False) for _ in range(adaptive.UNLOCK_WINDOW)]
    assert switched == [None] * (adaptive.UNLOCK_WINDOW - 1) + [OPTIMISTIC]
    assert history.mode == OPTIMISTIC


def test_a_locked_key_whose_writers_keep_meeting_stays_locked():
    history = KeyHistory()
    for i in range(adaptive.PROBE_AFTER - 1):  # (then a trial: below)
        assert history.record(locked=True, met=i % 8 == 0) is None  # one in eight meets: inside the band
    assert history.mode == LOCKING


def test_an_optimistic_key_locks_when_its_writers_meet_and_not_before():
    history = KeyHistory()
    history.mode = OPTIMISTIC
    assert history.record(locked=False, met=True) is None  # one meeting in the window: not yet
    for _ in range(adaptive.LOCK_WINDOW - 1):
        assert history.record(locked=False, met=False) is None
    assert history.record(locked=False, met=False) is None  # the first meeting left the window
    assert history.record(locked=False, met=True) is None
    assert history.record(locked=False, met=True) == LOCKING
    assert history.mode == LOCKING and not history.met


def test_a_key_locked_for_long_is_tried_optimistically_and_a_failed_trial_doubles_the_wait():
    """Writers that meet because the lock makes them wait get a trial of the optimistic mode."""
    history = KeyHistory()
    switched = [history.record(locked=True, met=True) for _ in range(adaptive.PROBE_AFTER)]
    assert switched == [None] * (adaptive.PROBE_AFTER - 1) + [OPTIMISTIC] and history.trial
    assert history.record(locked=False, met=True) is None
    assert history.record(locked=False, met=True) == LOCKING  # two retries in the trial: it failed
    assert not history.trial and history.probe_after == 2 * adaptive.PROBE_AFTER
    switched = [history.record(locked=True, met=True) for _ in range(2 * adaptive.PROBE_AFTER)]
    assert switched.index(OPTIMISTIC) == 2 * adaptive.PROBE_AFTER - 1


def test_a_trial_without_retries_keeps_the_key_optimistic():
    history = KeyHistory()
    history.probe_after = 4 * adaptive.PROBE_AFTER  # after failed trials
    for _ in range(4 * adaptive.PROBE_AFTER):
        history.record(locked=True, met=True)
    assert history.mode == OPTIMISTIC and history.trial
    for _ in range(adaptive.LOCK_WINDOW):
        assert history.record(locked=False, met=False) is None
    assert history.mode == OPTIMISTIC and not history.trial and history.probe_after == adaptive.PROBE_AFTER


def test_trials_wait_at_most_max_probe_after():
    history = KeyHistory()
    for _ in range(20):
        for _ in range(history.probe_after):
            history.record(locked=True, met=True)
        history.record(locked=False, met=True)
        history.record(locked=False, met=True)
    assert history.probe_after == adaptive.MAX_PROBE_AFTER


def test_an_outcome_of_the_other_mode_is_not_counted():
    """A transaction that began before a switch says nothing about the mode in force."""
    history = KeyHistory()
    for _ in range(3 * adaptive.UNLOCK_WINDOW):
        assert history.record(locked=False, met=False) is None
    assert history.mode == LOCKING and not history.met


def test_keys_are_bounded_and_a_forgotten_key_starts_locked_again(monkeypatch):
    monkeypatch.setattr(adaptive, "MAX_KEYS", 3)
    adaptive.record("k0", locked=False, met=False)
    monkeypatch.setattr(adaptive, "START", OPTIMISTIC)
    for name in ("k1", "k2", "k3"):
        assert not adaptive.locks(name)
    monkeypatch.setattr(adaptive, "START", LOCKING)
    assert adaptive.locks("k0")  # the least recently used was forgotten
    assert not adaptive.locks("k3")


def test_adaptive_is_the_default_policy():
    assert DEFAULT_POLICY == "adaptive"


def test_the_hot_counter_locks_under_sustained_conflicts_and_runs_optimistically_once_they_stop(
        store, zeo_server, monkeypatch):
    """Quiet, then four writers at once, then quiet again: the mode follows, no increment is lost,
    and no request needs a third try (the retry after a ConflictError holds the lock from its begin)."""
    metrics.reset()
    db = ZEO.DB(zeo_server.address)
    setup_counter(db)

    def quiet(count: int) -> dict:
        stats = dict(commits=0, busy=0, conflicts=0, failed=0)
        conn = db.open()
        for _ in range(count):
            publish(lambda: increment(conn.root()["counter"]), stats)
        conn.close()
        return stats

    start = threading.Barrier(4)
    most_tries = []

    def writer(i: int, stats: dict) -> None:
        client = ZEO.DB(zeo_server.address)
        conn = client.open()
        start.wait(30)
        for _ in range(12):
            before = stats["commits"] + stats["busy"] + stats["conflicts"] + stats["failed"]
            publish(lambda: overlapping(conn), stats)
            most_tries.append(stats["commits"] + stats["busy"] + stats["conflicts"] + stats["failed"] - before)
        conn.close()
        client.close()

    def overlapping(conn) -> None:
        counter = conn.root()["counter"]
        increment(counter)
        threading.Event().wait(0.005)  # the rest of the request, after the write: writers overlap

    first = quiet(adaptive.UNLOCK_WINDOW)
    (name,) = adaptive._histories  # the decorator's lock name: its function's name and HOT
    prefix = metrics.prefix_of(name)
    assert adaptive.mode(name) == OPTIMISTIC and metrics.snapshot()[prefix]["to_optimistic"] == 1
    busy = run_threads(4, writer)
    assert adaptive.mode(name) == LOCKING and metrics.snapshot()[prefix]["to_locking"] >= 1, busy
    assert busy["failed"] == 0 and busy["commits"] == 48 and max(most_tries) <= 2, (busy, most_tries)
    assert busy["conflicts"] >= adaptive.LOCK_AT, busy  # what made it lock
    freed = metrics.snapshot()[prefix]["to_optimistic"]
    last = quiet(adaptive.UNLOCK_WINDOW)
    assert adaptive.mode(name) == OPTIMISTIC and metrics.snapshot()[prefix]["to_optimistic"] == freed + 1
    assert first["conflicts"] == last["conflicts"] == 0 and first["busy"] == last["busy"] == 0
    assert read_counter(db) == adaptive.UNLOCK_WINDOW * 2 + 48
    db.close()


@pytest.mark.parametrize("start", [LOCKING, OPTIMISTIC])
def test_a_locked_retry_never_fails_on_the_key(store, zeo_server, monkeypatch, start):
    """Eight writers of the hot counter, the key starting in either mode: every request commits
    within two tries, and the counter is exact."""
    monkeypatch.setattr(adaptive, "START", start)
    db = ZEO.DB(zeo_server.address)
    setup_counter(db)
    tries: list[int] = []

    def writer(i: int, stats: dict) -> None:
        client = ZEO.DB(zeo_server.address)
        conn = client.open()
        for _ in range(6):
            before = sum(stats.values())
            publish(lambda: increment(conn.root()["counter"]), stats)
            tries.append(sum(stats.values()) - before)
        conn.close()
        client.close()

    stats = run_threads(8, writer)
    assert stats["failed"] == 0 and stats["commits"] == 48, stats
    assert max(tries) <= 2 < TRIES, (stats, tries)
    assert read_counter(db) == 48
    db.close()
    transaction.abort()


def test_writers_that_only_meet_at_the_lock_are_freed_by_a_trial(store, zeo_server, monkeypatch):
    """Two writers of different objects under one key, each working on after the locked call: locked,
    every transaction waits for the other's; the trial finds no conflict and the key stays optimistic."""
    monkeypatch.setattr(adaptive, "PROBE_AFTER", 8)
    db = ZEO.DB(zeo_server.address)
    with db.transaction() as conn:
        for i in range(2):
            conn.root()["counter-%d" % i] = PersistentMapping(value=0)

    def writer(i: int, stats: dict) -> None:
        client = ZEO.DB(zeo_server.address)
        conn = client.open()

        def request() -> None:
            increment(conn.root()["counter-%d" % i])
            threading.Event().wait(0.01)  # the rest of the request, holding the lock if locked

        for _ in range(30):
            publish(request, stats)
        conn.close()
        client.close()

    stats = run_threads(2, writer)
    (name,) = adaptive._histories
    assert adaptive.mode(name) == OPTIMISTIC, stats
    assert stats == dict(commits=60, busy=stats["busy"], conflicts=0, failed=0), stats
    with db.transaction() as conn:
        assert [conn.root()["counter-%d" % i]["value"] for i in range(2)] == [30, 30]
    db.close()
