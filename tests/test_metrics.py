"""Metrics: counters and percentiles per key prefix, snapshot files, merging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from unimr.memcachedlock import metrics
from unimr.memcachedlock.decorators import function_prefix, lock
from unimr.memcachedlock.errors import ConfigurationError, LockTimeout
from unimr.memcachedlock.locks import Lock


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.reset()
    yield
    metrics.reset()



def _read(path: str) -> dict:
    with open(path) as snapshot:
        return json.load(snapshot)

def test_percentile_nearest_rank():
    samples = list(range(1, 101))
    assert metrics.percentile(samples, 0.5) == 50
    assert metrics.percentile(samples, 0.99) == 99
    assert metrics.percentile([7.0], 0.99) == 7.0
    assert metrics.percentile([], 0.5) is None


def test_counts_per_prefix_with_percentiles():
    for i in range(100):
        metrics.record_acquire("app.f:k%d" % i, i / 1000.0, i >= 90)
        metrics.record_release("app.f:k%d" % i, i / 100.0)
    metrics.record_acquire("plain", 0.0, False)
    metrics.record_busy("app.f:x")
    metrics.record_view_move("app.f:x")
    metrics.record_view_move("app.f:y")
    metrics.record_timeout("app.f:x")
    snap = metrics.snapshot()
    app = snap["app.f"]
    assert app["acquisitions"] == 100 and app["waits"] == 10 and app["releases"] == 100
    assert app["wait_time"] == pytest.approx(sum(range(90, 100)) / 1000.0)
    assert app["wait_p50"] == pytest.approx(0.049) and app["wait_p99"] == pytest.approx(0.098)
    assert app["hold_p50"] == pytest.approx(0.49) and app["hold_p99"] == pytest.approx(0.98)
    assert app["busy_retries"] == 1 and app["timeouts"] == 1 and app["lost"] == 0 and app["fallbacks"] == 0
    assert app["view_moves"] == 2
    assert snap["(other)"]["acquisitions"] == 1 and snap["(other)"]["hold_p50"] is None


def test_samples_are_bounded():
    for i in range(metrics.SAMPLES * 3):
        metrics.record_release("app.f:k", float(i))
    report = metrics.report()
    assert len(report["prefixes"]["app.f"]["holds"]) == metrics.SAMPLES
    assert metrics.snapshot()["app.f"]["releases"] == metrics.SAMPLES * 3


def test_real_locks_record_acquisitions_waits_holds_and_timeouts(memcached):
    @lock(lambda fun: "k", timeout=5, wait=0.2)
    def guarded():
        time.sleep(0.05)

    guarded()
    holder = Lock(function_prefix(guarded) + "k")
    assert holder.acquire(timeout=5)
    with pytest.raises(LockTimeout):
        guarded()
    released = threading.Timer(0.1, holder.release)
    released.start()
    waiter = Lock(holder.key)
    assert waiter.acquire(timeout=5)
    waiter.release()
    released.join()
    data = metrics.snapshot()[metrics.prefix_of(holder.name)]
    assert data["acquisitions"] == 3 and data["releases"] == 3 and data["timeouts"] == 1
    assert data["waits"] >= 1 and data["wait_p99"] >= 0.05
    assert data["hold_p99"] >= 0.05


def test_lost_lease_is_counted(memcached):
    held = Lock("app.g:lost", timeout=30)
    assert held.acquire(timeout=5)
    assert held.backend.break_lock(held.name)
    held.release()
    assert metrics.snapshot()["app.g"]["lost"] == 1


def test_log_summary_at_debug(caplog):
    metrics.record_acquire("app.f:k", 0.002, True)
    metrics.record_release("app.f:k", 0.010)
    with caplog.at_level(logging.DEBUG, logger="unimr.memcachedlock.metrics"):
        metrics.log_summary()
    assert "locks app.f: 1 acquired, 1 waited (p50 2.0ms, p99 2.0ms), held p50 10.0ms" in caplog.text


def test_write_snapshot_and_merge(tmp_path):
    metrics.record_acquire("app.f:k", 0.0, False)
    metrics.record_release("app.f:k", 0.5)
    path = metrics.write_snapshot(str(tmp_path))
    assert os.path.basename(path).endswith("-%d.json" % os.getpid())
    with open(path) as snapshot:
        data = json.load(snapshot)
    assert data["pid"] == os.getpid() and data["prefixes"]["app.f"]["holds"] == [0.5]
    other = dict(data, pid=1, prefixes={"app.f": {"counters": {"acquisitions": 2, "timeouts": 1},
                                                  "waits": [0.1, 0.3], "holds": [1.5, 2.5]}})
    (tmp_path / "other-1.json").write_text(json.dumps(other))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "foreign.json").write_text(json.dumps({"format": 99}))
    snapshots = metrics.read_snapshots(str(tmp_path))
    assert len(snapshots) == 2
    merged = metrics.merge(snapshots)["app.f"]
    assert merged["acquisitions"] == 3 and merged["timeouts"] == 1 and merged["processes"] == 2
    assert merged["hold_p50"] == 1.5 and merged["hold_p99"] == 2.5 and merged["wait_p99"] == 0.3
    old = dict(other, time=time.time() - 1000)
    (tmp_path / "other-1.json").write_text(json.dumps(old))
    assert len(metrics.read_snapshots(str(tmp_path), max_age=100)) == 1


def test_write_snapshot_needs_a_directory():
    with pytest.raises(ConfigurationError, match="MEMCACHEDLOCK_METRICS_DIR"):
        metrics.write_snapshot()


def test_periodic_writer_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_METRICS_DIR", str(tmp_path))
    monkeypatch.setenv("MEMCACHEDLOCK_METRICS_INTERVAL", "0.2")
    metrics.reset()
    metrics.record_acquire("app.f:k", 0.0, False)
    path = metrics.snapshot_path(str(tmp_path))
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "no snapshot written within 10s"
        time.sleep(0.05)
    first = os.stat(path).st_mtime_ns
    metrics.record_acquire("app.f:k", 0.0, False)
    while os.stat(path).st_mtime_ns == first:
        assert time.monotonic() < deadline, "snapshot not rewritten"
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while _read(path)["prefixes"]["app.f"]["counters"]["acquisitions"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    metrics.reset()
    os.unlink(path)
    time.sleep(0.5)
    assert not os.path.exists(path), "reset() stops the writer"


def test_configure_metrics_in_code(tmp_path):
    metrics.configure_metrics(str(tmp_path), 0.2)
    metrics.record_acquire("app.f:k", 0.0, False)
    path = metrics.snapshot_path(str(tmp_path))
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(ConfigurationError, match="'relative'"):
        metrics.configure_metrics("relative")
    with pytest.raises(ConfigurationError, match="0.0"):
        metrics.configure_metrics(str(tmp_path), 0.0)


@pytest.mark.parametrize("env, named", [
    ({"MEMCACHEDLOCK_METRICS_INTERVAL": "often"}, "'often'"),
    ({"MEMCACHEDLOCK_METRICS_INTERVAL": "nan"}, "'nan'"),
    ({"MEMCACHEDLOCK_METRICS_DIR": "relative/dir"}, "'relative/dir'"),
])
def test_bad_metrics_settings_are_named(env, named):
    with pytest.raises(ConfigurationError) as info:
        metrics.metrics_settings(env)
    assert named in str(info.value)
    assert metrics.metrics_settings({}) == ("", metrics.DEFAULT_INTERVAL)


def test_forked_child_starts_empty():
    metrics.record_acquire("app.f:k", 0.0, False)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(metrics.snapshot()).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = os.read(read, 65536)
    os.close(read)
    os.waitpid(pid, 0)
    assert json.loads(data) == {}
    assert metrics.snapshot()["app.f"]["acquisitions"] == 1


def test_prefix_cardinality_is_bounded_and_snapshots_stay_small(tmp_path):
    """100k keys with a varying part before the colon: bounded records and file."""
    keys = 100_000
    for i in range(keys):
        name = "doc-%d:edit" % i
        metrics.record_acquire(name, 0.0001, False)
        metrics.record_release(name, 0.002)
    snap = metrics.snapshot()
    assert len(snap) == metrics.MAX_PREFIXES + 1
    assert snap[metrics.OTHER]["acquisitions"] == keys - metrics.MAX_PREFIXES
    assert sum(data["acquisitions"] for data in snap.values()) == keys
    path = metrics.write_snapshot(str(tmp_path))
    assert os.path.getsize(path) < 1_500_000


def test_merge_skips_fields_of_the_wrong_type(tmp_path):
    """A snapshot with strings where numbers belong is read without a TypeError."""
    bad = {"format": metrics.SNAPSHOT_FORMAT, "host": "h", "pid": 1, "time": "yesterday",
           "prefixes": {"app.f": {"counters": {"acquisitions": "many", "timeouts": 2},
                                  "waits": ["x", 0.5], "holds": "no"},
                        "broken": "not a dict"}}
    (tmp_path / "h-1.json").write_text(json.dumps(bad))
    merged = metrics.merge(metrics.read_snapshots(str(tmp_path)))
    assert merged["app.f"]["acquisitions"] == 0 and merged["app.f"]["timeouts"] == 2
    assert merged["app.f"]["wait_p50"] == 0.5 and merged["app.f"]["hold_p50"] is None
    assert "broken" not in merged


def test_conflicts_are_counted_bounded_and_merged_across_processes(tmp_path):
    """Rows per table are bounded (the rest under (other)); two processes' files add up, the most frequent first."""
    for i in range(metrics.MAX_CONFLICT_ROWS + 10):
        metrics.record_conflict("app.Hot", "POST /site/doc-%d" % i, retried=True)
    metrics.record_conflict("app.Cold", "POST /site/doc-0", retried=False)
    mine = metrics.conflicts()
    assert mine["classes"] == {"app.Hot": {"retried": metrics.MAX_CONFLICT_ROWS + 10}, "app.Cold": {"failed": 1}}
    assert len(mine["requests"]) == metrics.MAX_CONFLICT_ROWS + 1
    assert mine["requests"][metrics.OTHER] == {"retried": 10}
    assert mine["requests"]["POST /site/doc-0"] == {"retried": 1, "failed": 1}
    metrics.write_snapshot(str(tmp_path))
    other = dict(metrics.report(), pid=-1, conflicts={"classes": {"app.Cold": {"failed": 2, "retried": "x"}},
                                                      "requests": "not a dict"})
    (tmp_path / "other--1.json").write_text(json.dumps(other))
    merged = metrics.merge_conflicts(metrics.read_snapshots(str(tmp_path)))
    assert merged["classes"] == [("app.Hot", metrics.MAX_CONFLICT_ROWS + 10, 0), ("app.Cold", 0, 3)]
    assert merged["requests"][0] == (metrics.OTHER, 10, 0)
    assert merged["requests"][1] == ("POST /site/doc-0", 1, 1)


def test_importing_the_package_starts_no_thread_and_hooks_nothing_at_exit(tmp_path):
    """Metrics have no side effects at import: the writer and its exit hook come with a directory."""
    code = (
        "import threading\n"
        "import unimr.memcachedlock\n"
        "from unimr.memcachedlock import metrics\n"
        "print(threading.active_count(), metrics._exit_hooked)\n"
        "metrics.configure_metrics(%r, 60)\n"
        "print(metrics._exit_hooked, 'memcachedlock-metrics' in [t.name for t in threading.enumerate()])\n"
        % str(tmp_path)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCACHEDLOCK_METRICS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["1 False", "True True"]
