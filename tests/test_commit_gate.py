"""The commit gate of each store (memcached, lock directory, fallback): real servers, threads, processes.

Optimistic commits pass the gate together while nobody holds the lock; a
holder waits for the passes before it and then reads every entry they
appended to the note.  Assertions are on the order of events and on what
the note holds, never on time.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from unimr.memcachedlock import registry
from unimr.memcachedlock.backends.filegate import GATE_SUFFIX
from unimr.memcachedlock.errors import BackendUnavailable
from unimr.memcachedlock.zodb.notes import decode_note, encode_entries, encode_note
from unimr.memcachedlock.zodb.policy_onconflict import COMPACT_AT

NAME = "gate-test"


def tid(number: int) -> bytes:
    return number.to_bytes(8, "big")


def leave_as_zlock_does(entered, identity: str, number: int) -> None:
    """Leave with one entry, compacting a long note as ``policy_onconflict._leave_gate`` does."""
    tids = {identity: tid(number)}
    compact = None
    if entered.note and entered.note.count(b" ") >= COMPACT_AT:
        def compact(note: bytes | None) -> bytes:
            return encode_note({**decode_note(note), **tids})
    entered.leave(encode_entries(tids), compact)


def test_a_holder_waits_for_the_pass_before_it_and_reads_its_entry(store):
    backend = registry.get_backend()
    gate = backend.commit_gate
    entered = gate.enter(NAME)
    assert entered is not None and gate.passing(NAME) == 1
    events: list = []
    found: list = []

    def holder() -> None:
        lease = backend.acquire(NAME, 10)
        assert lease is not None  # a pass does not hold the lock
        try:
            found.append(decode_note(gate.drain(NAME, 10)))
            events.append("drained")
        finally:
            lease.release()

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.2)
    events.append("left")
    entered.leave(encode_entries({"site": tid(7)}))
    thread.join(15)
    assert events == ["left", "drained"]
    assert found == [{"site": tid(7)}]
    assert gate.passing(NAME) == 0


def test_no_pass_while_the_lock_is_held(store):
    backend = registry.get_backend()
    gate = backend.commit_gate
    lease = backend.acquire(NAME, 10)
    assert gate.enter(NAME) is None
    assert gate.passing(NAME) == 0
    lease.release()
    entered = gate.enter(NAME)
    assert entered is not None
    entered.leave()
    assert gate.drain(NAME, 1) is None  # nothing recorded: no entry given


def test_concurrent_passes_and_compaction_drop_no_entry(store):
    """8 threads x 25 commits, each its own storage: the note keeps every storage's last tid."""
    backend = registry.get_backend()
    gate = backend.commit_gate
    errors: list = []

    def commits(client: int) -> None:
        try:
            for number in range(1, 26):
                entered = gate.enter(NAME)
                assert entered is not None
                leave_as_zlock_does(entered, "client-%d" % client, number)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=commits, args=(client,)) for client in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    note = gate.drain(NAME, 5)
    assert decode_note(note) == {"client-%d" % client: tid(25) for client in range(8)}
    assert note.count(b" ") < 200  # compacted on the way: 200 entries were appended


KILLED_IN_COMMIT = textwrap.dedent("""
    import sys, time
    from unimr.memcachedlock import registry
    entered = registry.get_backend().commit_gate.enter(sys.argv[1])
    assert entered is not None
    print("entered", flush=True)
    time.sleep(60)
""")


def test_a_process_killed_during_its_commit_delays_the_next_holder_once(store, caplog):
    """memcached keeps the dead pass's count until a holder's drain gives up and resets it (one
    warning); a flock dies with its process."""
    name = "%s-%s" % (NAME, store)  # one warning per lock and process: a name of its own
    backend = registry.get_backend()
    gate = backend.commit_gate
    child = subprocess.Popen([sys.executable, "-c", KILLED_IN_COMMIT, name], stdout=subprocess.PIPE,
                             env=dict(os.environ))
    try:
        assert child.stdout.readline() == b"entered\n"
        assert gate.passing(name) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    caplog.set_level(logging.WARNING)
    lease = backend.acquire(name, 10)
    gate.drain(name, 0.5)
    lease.release()
    resets = [r for r in caplog.records if "still" in r.getMessage()]
    assert len(resets) == (0 if store == "file" else 1)
    assert gate.passing(name) == 0
    entered = gate.enter(name)
    entered.leave()
    lease = backend.acquire(name, 10)
    gate.drain(name, 0.5)
    lease.release()
    assert len([r for r in caplog.records if "still" in r.getMessage()]) == len(resets)


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_planted_gate_file_is_refused_not_followed(lock_dir, monkeypatch, tmp_path, plant):
    """A symlink or FIFO at the gate's path: entering fails (the commit takes the lock), nothing hangs."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    registry.reset()
    backend = registry.get_backend()
    path = backend.path_for(NAME)[: -len(".lock")] + GATE_SUFFIX
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    if plant == "symlink":
        os.symlink(target, path)
    else:
        os.mkfifo(path)
    with pytest.raises(BackendUnavailable):
        backend.commit_gate.enter(NAME)
    lease = backend.acquire(NAME, 10)
    assert lease is not None
    with pytest.raises(BackendUnavailable):
        backend.commit_gate.drain(NAME, 0.5)
    lease.release()
    assert target.read_bytes() == b"keep"
