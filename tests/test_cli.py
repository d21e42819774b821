"""The ``memcachedlock`` subcommands against a real memcached and a real lock directory.

Most calls go through ``cli.main`` in this process (fast, same code as the
console script); the exit-code, one-line-error and no-terminal cases run the
installed console script as a subprocess, as a user would.
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from unimr.memcachedlock.locks import Lock
from unimr.memcachedlock.tools import cli

from servers import MemcachedServer, free_port

SCRIPT = os.path.join(os.path.dirname(sys.executable), "memcachedlock")

HOLD = """
import sys, threading, time
from unimr.memcachedlock.locks import Lock
if len(sys.argv) > 2:
    threading.current_thread().name = sys.argv[2]
lock = Lock(sys.argv[1], timeout=30)
assert lock.acquire(timeout=5)
print("held", flush=True)
sys.stdin.readline()
lease = lock.lease
lock.release()
print("lost" if lease.lost else "released", flush=True)
"""


def assert_no_locks(result: tuple[int, str]) -> None:
    """``list`` found nothing and said in which store it looked."""
    code, text = result
    assert code == 0 and text.startswith("no locks held in ") and "(prefix " in text, text


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def script(*argv: str, stdin=subprocess.DEVNULL, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *argv], capture_output=True, text=True, stdin=stdin, timeout=timeout, **kw)


def read_question(proc: subprocess.Popen, timeout: float = 30) -> bytes:
    """What ``proc`` wrote on stderr up to its ``[y/N]`` question."""
    prompt = b""
    deadline = time.monotonic() + timeout
    while b"[y/N]" not in prompt:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "no question within %ds: %r" % (timeout, prompt)
        chunk = os.read(proc.stderr.fileno(), 1024)
        assert chunk, "ended without asking: %r" % prompt
        prompt += chunk
    return prompt


class Holder:
    """A lock held by another process (its thread named ``thread``) until ``release()``."""

    def __init__(self, key: str, thread: str = "MainThread") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, key, thread], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        self.proc.wait(10)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def holder():
    made = []

    def make(key: str, thread: str = "MainThread") -> Holder:
        made.append(Holder(key, thread))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.mark.parametrize("command", ["demo", "list", "show", "break", "check", "stats"])
def test_every_subcommand_has_help(command):
    proc = script(command, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: memcachedlock %s" % command)


def test_python_dash_m_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "unimr.memcachedlock", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "demo" in proc.stdout and "Exit codes" in proc.stdout


def test_list_shows_holders_in_memcached(memcached, holder):
    mine = Lock("site:catalog", timeout=30)
    assert mine.acquire(timeout=5)
    other = holder("site:/plone/portal_catalog with space")
    try:
        code, text = run("list")
        assert code == 0
        lines = text.splitlines()
        assert lines[0].split() == ["KEY", "HOLDER", "AGE", "TTL", "LEFT", "STORE"]
        catalog = next(line for line in lines if line.startswith("site:catalog "))
        assert "pid %d thread MainThread" % os.getpid() in catalog and "memcached" in catalog
        assert any(line.startswith("site:/plone/portal_catalog with space ")
                   and "pid %d" % other.proc.pid in line for line in lines)
        code, text = run("list", "--json")
        entries = {entry["name"]: entry for entry in json.loads(text)}
        assert entries["site:%2Fplone%2Fportal_catalog%20with%20space"]["key"] == \
            "site:/plone/portal_catalog with space"
        entry = entries["site:catalog"]
        assert entry["pid"] == os.getpid() and entry["host"] == socket.gethostname()
        assert 25 < entry["ttl_left"] <= 30 and 0 <= entry["age"] < 5
    finally:
        mine.release()
        other.release()
    assert_no_locks(run("list"))


def test_list_ignores_other_keys_and_notes(memcached):
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", memcached.port), default_noreply=False)
    client.set("unrelated", b"x")
    client.set("memcachedlock:site:x#note", b"123")
    assert_no_locks(run("list"))


def test_list_file_store_from_the_lock_directory(lock_dir, holder, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    other = holder("site:file-lock")
    try:
        code, text = run("list")
        assert code == 0
        line = next(line for line in text.splitlines() if line.startswith("site:file-lock"))
        assert "pid %d" % other.proc.pid in line and line.endswith("file")
        assert os.path.exists(lock_dir / "site:file-lock.lock")
    finally:
        other.release()
    assert_no_locks(run("list"))


def test_show_by_key_or_by_stored_name(memcached, holder):
    other = holder("site:/a b")
    try:
        for argv in (("site:/a b",), ("--name", "site:%2Fa%20b")):
            code, text = run("show", *argv)
            assert code == 0, text
            fields = dict(line.split(None, 1) for line in text.splitlines())
            assert fields["key"] == "site:/a b"
            assert fields["pid"] == str(other.proc.pid)
            assert fields["store"] == "memcached"
        code, text = run("show", "site:/a b", "--json")
        assert json.loads(text)["pid"] == other.proc.pid
        code, text = run("show", "site:%2Fa%20b")
        assert (code, text) == (1, "site:%2Fa%20b is not locked\n"), "a key is taken literally"
    finally:
        other.release()
    code, text = run("show", "site:/a b")
    assert code == 1 and "is not locked" in text


def test_break_without_yes_and_without_terminal_refuses(memcached, holder):
    other = holder("site:stuck")
    try:
        proc = script("break", "site:stuck", "--servers", memcached.address, "--backend", "memcached")
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "refusing to break site:stuck" in proc.stderr and "--yes" in proc.stderr
        assert "pid %d" % other.proc.pid in proc.stderr
        code, _ = run("show", "site:stuck")
        assert code == 0, "the lock must still be held"
    finally:
        assert other.release() == "released"


def test_break_with_yes_removes_the_lock_and_logs_who_broke_it(memcached, holder):
    other = holder("site:stuck")
    try:
        proc = script("break", "site:stuck", "--yes", "--servers", memcached.address, "--backend", "memcached")
        assert proc.returncode == 0, proc.stderr
        assert "broke site:stuck (was held by" in proc.stdout
        assert "WARNING" in proc.stderr and "broken by" in proc.stderr
        assert "pid %d" % other.proc.pid in proc.stderr
        assert run("show", "site:stuck")[0] == 1
    finally:
        assert other.release() == "lost"
    proc = script("break", "site:stuck", "--yes", "--servers", memcached.address, "--backend", "memcached")
    assert proc.returncode == 1 and "nothing to break" in proc.stdout


def test_break_on_a_terminal_asks_first(memcached, holder):
    import pty

    other = holder("site:ask")
    try:
        for answer, expected in ((b"n\n", 1), (b"y\n", 0)):
            master, slave = pty.openpty()
            try:
                proc = subprocess.Popen([SCRIPT, "break", "site:ask", "--servers", memcached.address,
                                         "--backend", "memcached"], stdin=slave, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                os.close(slave)
                prompt = read_question(proc)
                assert b"Break lock site:ask held by" in prompt
                os.write(master, answer)
                out, err = proc.communicate(timeout=30)
                out, err = out.decode(), err.decode()
            finally:
                os.close(master)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == expected, err
        assert "broke site:ask" in out
    finally:
        other.release()


def test_unreachable_store_is_one_line_and_exit_3(tmp_path):
    proc = script("list", "--servers", "127.0.0.1:%d" % free_port(), "--backend", "memcached")
    assert proc.returncode == 3
    assert proc.stderr.startswith("memcachedlock list: lock store unreachable: memcached 127.0.0.1:")
    assert proc.stderr.count("\n") == 1


def test_list_with_fallback_and_memcached_down_shows_the_lock_directory(lock_dir, holder, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    other = holder("site:during-outage")
    try:
        code, text = run("list", "--backend", "fallback", "--servers", "127.0.0.1:%d" % free_port())
        assert code == 0
        assert "site:during-outage" in text and "pid %d" % other.proc.pid in text
    finally:
        other.release()


# --------------------------------------------------------------------------- check


def test_check_ok_against_a_real_memcached(memcached):
    code, text = run("check")
    assert code == 0, text
    assert "memcached %s: reachable, version 1." % memcached.address in text
    assert "0 evictions" in text and "temporary_ttl off" in text
    assert "warning: no eviction yet, but memory pressure would evict live locks" in text
    assert text.rstrip().endswith("ok")


def _fill(server: MemcachedServer, megabytes: int) -> None:
    from pymemcache.client.base import Client

    client = Client(("127.0.0.1", server.port), default_noreply=True)
    value = b"x" * 100_000
    for i in range(megabytes * 10):
        client.set("filler-%d" % i, value)
    client.close()


def test_check_reports_evicting_server_with_the_fix(tmp_path):
    with MemcachedServer(memory_mb=2) as server:
        _fill(server, 8)
        assert int(server.stats()["evictions"]) > 0
        proc = script("check", "--servers", server.address, "--backend", "memcached")
        assert proc.returncode == 1, proc.stdout
        assert "PROBLEM: has evicted" in proc.stdout and "may evict live locks" in proc.stdout
        assert "-o temporary_ttl=" in proc.stdout
        code, text = run("check", "--servers", server.address, "--backend", "memcached", "--json")
        data = json.loads(text)
        assert code == 1 and data["ok"] is False
        assert data["servers"][0]["can_evict_locks"] is True and data["servers"][0]["evictions"] > 0


def test_check_accepts_an_evicting_server_with_temporary_ttl(tmp_path):
    with MemcachedServer(memory_mb=2, extra=("-o", "temporary_ttl=60")) as server:
        _fill(server, 8)
        code, text = run("check", "--servers", server.address, "--backend", "memcached", "--json")
        data = json.loads(text)
        assert data["servers"][0]["evictions"] > 0
        assert data["servers"][0]["temporary_ttl"] == 60 and data["servers"][0]["can_evict_locks"] is False
        assert code == 0 and data["ok"] is True


def test_check_reports_unreachable_server(lock_dir):
    port = free_port()
    proc = script("check", "--servers", "127.0.0.1:%d" % port)
    assert proc.returncode == 1
    assert "memcached 127.0.0.1:%d: UNREACHABLE" % port in proc.stdout
    assert "lock directory" in proc.stdout


@pytest.mark.parametrize("name, value, named", [
    ("MEMCACHEDLOCK_SERVERS", "127.0.0.1:11211,localhost:99999", "'localhost:99999'"),
    ("MEMCACHEDLOCK_SERVERS", "::1:11211", "'::1:11211'"),
    ("MEMCACHEDLOCK_BACKEND", "redis", "'redis'"),
    ("MEMCACHEDLOCK_IO_TIMEOUT", "soon", "MEMCACHEDLOCK_IO_TIMEOUT='soon'"),
    ("MEMCACHEDLOCK_METRICS_INTERVAL", "-1", "MEMCACHEDLOCK_METRICS_INTERVAL='-1'"),
])
def test_check_names_the_bad_configuration_entry(monkeypatch, name, value, named):
    monkeypatch.setenv(name, value)
    code, text = run("check")
    assert code == 2
    assert text.startswith("configuration: PROBLEM:") and named in text
    env = dict(os.environ)
    proc = subprocess.run([SCRIPT, "check", "--json"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and json.loads(proc.stdout)["ok"] is False
    proc = subprocess.run([SCRIPT, "list"], capture_output=True, text=True, env=env, timeout=30)
    if name != "MEMCACHEDLOCK_METRICS_INTERVAL":
        assert proc.returncode == 2
        assert proc.stderr.startswith("memcachedlock list: configuration error:") and named in proc.stderr
        assert "Traceback" not in proc.stderr


def test_check_file_store_with_unwritable_lock_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(blocker / "locks"))
    code, text = run("check")
    assert code == 1 and "lock directory: PROBLEM" in text and str(blocker) in text


# --------------------------------------------------------------------------- stats and bench


WORKLOAD = """
import sys
from unimr.memcachedlock.locks import Lock
for i in range(int(sys.argv[1])):
    with Lock("app.f:k%d" % (i % 3)):
        pass
"""


def test_stats_merges_the_snapshots_of_several_processes(memcached, tmp_path, monkeypatch):
    metrics_dir = tmp_path / "metrics"
    monkeypatch.setenv("MEMCACHEDLOCK_METRICS_DIR", str(metrics_dir))
    procs = [subprocess.Popen([sys.executable, "-c", WORKLOAD, str(n)]) for n in (5, 7)]
    for proc in procs:
        assert proc.wait(60) == 0
    assert len(os.listdir(metrics_dir)) == 2
    code, text = run("stats", "--json")
    assert code == 0
    data = json.loads(text)
    assert data["snapshots"] == 2
    app = data["prefixes"]["app.f"]
    assert app["acquisitions"] == 12 and app["releases"] == 12 and app["processes"] == 2
    assert 0 <= app["wait_p50"] <= app["wait_p99"] and 0 <= app["hold_p50"] <= app["hold_p99"]
    code, text = run("stats")
    assert code == 0 and "2 snapshot(s) in %s" % metrics_dir in text
    row = next(line for line in text.splitlines() if line.startswith("app.f"))
    assert row.split()[1:4] == ["2", "12", str(int(app["waits"]))]


def test_stats_without_directory_or_snapshots(tmp_path, monkeypatch):
    proc = script("stats")
    assert proc.returncode == 2 and "MEMCACHEDLOCK_METRICS_DIR" in proc.stderr
    assert run("stats", "--dir", str(tmp_path))[0] == 1
    assert run("stats", "--dir", str(tmp_path / "missing"))[0] == 1


def test_bench_passes_its_arguments_through():
    proc = script("bench", "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: memcachedlock bench")


def test_server_without_lru_crawler_cannot_list_and_check_warns(holder, monkeypatch):
    with MemcachedServer(extra=("-X",)) as server:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", server.address)
        monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
        other = holder("site:hidden")
        try:
            proc = script("list")
            assert proc.returncode == 3
            assert "refused metadump" in proc.stderr and proc.stderr.count("\n") == 1
            assert run("show", "site:hidden")[0] == 0, "show reads the key directly"
            code, text = run("check")
            assert code == 0
            assert "warning: the LRU crawler or metadump is off (-X)" in text
        finally:
            other.release()
