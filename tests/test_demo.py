"""``memcachedlock demo`` end to end: real ZEO, real client processes, real lock stores.

Runs are kept small (2-3 clients, a few writes, a few ms of work) so the file
stays well under a minute on two busy cores; the figures themselves are
checked for consistency, not for a speed-up, which a loaded machine cannot
promise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unimr.memcachedlock.tools.demo import PhaseResult, format_table, summary

SCRIPT = os.path.join(os.path.dirname(sys.executable), "memcachedlock")


def clean_env(tmp_path, **extra) -> dict:
    """An environment with nothing configured: no MEMCACHEDLOCK_*, a private TMPDIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCACHEDLOCK_")}
    env["TMPDIR"] = str(tmp_path)
    env.update(extra)
    return env


def leftovers(tmp_path) -> list[str]:
    """Processes whose command line or working directory lies under ``tmp_path``."""
    found = []
    root = str(tmp_path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            cwd = os.readlink("/proc/%s/cwd" % pid)
        except OSError:
            continue
        if root in cmdline or cwd.startswith(root):
            found.append("%s %s" % (pid, cmdline))
    return found


def demo_dirs(tmp_path) -> list[str]:
    return [name for name in os.listdir(tmp_path) if name.startswith("memcachedlock-demo-")]


def check_runs(runs: list[dict], clients: int, writes: int) -> None:
    assert [r["mode"] for r in runs] == ["nolock", "zlock"]
    for run in runs:
        assert run["commits"] == clients * writes
        assert run["final_count"] == clients * writes, "an update was lost"
        assert run["nothing_lost"] is True
        assert run["executions"] == run["attempts"] - run["busy"]
        assert run["attempts"] == run["commits"] + run["conflicts"] + run["busy"]
        assert run["wasted"] == run["executions"] - run["commits"] >= 0
        assert run["wall"] > 0
    assert runs[0]["busy"] == 0


def test_demo_with_nothing_configured_and_no_memcached_uses_the_file_store(tmp_path):
    """The acceptance case: no configuration, no memcached binary, nothing listening."""
    env = clean_env(tmp_path, PATH="/nonexistent")
    started = time.monotonic()
    proc = subprocess.run(
        [SCRIPT, "demo", "--clients", "3", "--writes", "4", "--work", "5"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "Lock store: the file store" in proc.stderr
    assert "no memcached binary on PATH" in proc.stderr
    assert "MEMCACHEDLOCK_SERVERS is not set" in proc.stderr
    assert "no lock:" in proc.stderr and "zlock:" in proc.stderr  # progress
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("run"))
    for column in ("commits", "conflicts", "zlock retries", "wasted", "wall", "speed-up"):
        assert column in header
    nolock = next(line for line in lines if line.startswith("no lock"))
    zlock = next(line for line in lines if line.startswith("zlock "))
    assert nolock.split()[2] == "12" and zlock.split()[1] == "12"  # commits
    assert "12/12" in nolock and "12/12" in zlock
    assert "zlock retries: attempts zlock restarted before doing the work" in proc.stdout  # the legend
    assert "Traceback" not in proc.stderr
    assert elapsed < 60
    assert demo_dirs(tmp_path) == []
    assert leftovers(tmp_path) == []


def test_demo_uses_reachable_memcached_servers_and_prints_json(tmp_path, memcached):
    env = clean_env(tmp_path, MEMCACHEDLOCK_SERVERS=memcached.address)
    proc = subprocess.run(
        [SCRIPT, "demo", "--clients", "2", "--writes", "3", "--work", "2", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["store"]["kind"] == "memcached"
    assert memcached.address in data["store"]["description"]
    assert "MEMCACHEDLOCK_SERVERS" in data["store"]["description"]
    check_runs(data["runs"], 2, 3)
    assert data["speedup"] == pytest.approx(data["runs"][0]["wall"] / data["runs"][1]["wall"], rel=0.05)
    assert demo_dirs(tmp_path) == [] and leftovers(tmp_path) == []


def test_demo_starts_a_private_memcached_when_the_configured_one_is_down(tmp_path):
    from servers import free_port

    env = clean_env(tmp_path, MEMCACHEDLOCK_SERVERS="127.0.0.1:%d" % free_port())
    proc = subprocess.run(
        [SCRIPT, "demo", "--clients", "2", "--writes", "3", "--work", "2", "--backend", "memcached",
         "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["store"]["kind"] == "memcached"
    assert "private memcached" in data["store"]["description"]
    check_runs(data["runs"], 2, 3)
    assert demo_dirs(tmp_path) == [] and leftovers(tmp_path) == []


def test_demo_backend_memcached_without_any_memcached_fails_in_one_line(tmp_path):
    env = clean_env(tmp_path, PATH="/nonexistent")
    proc = subprocess.run([SCRIPT, "demo", "--backend", "memcached"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("memcachedlock demo: --backend memcached")
    assert "Traceback" not in proc.stderr
    assert demo_dirs(tmp_path) == [] and leftovers(tmp_path) == []


def test_demo_reports_bad_servers_before_starting_zeo(tmp_path):
    env = clean_env(tmp_path, MEMCACHEDLOCK_SERVERS="memcached://127.0.0.1:11211")
    proc = subprocess.run([SCRIPT, "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        ("memcachedlock demo: configuration error: bad memcached server 'memcached://127.0.0.1:11211': "
         "give host:port without a URL scheme ('memcached://' is not understood)")]
    assert demo_dirs(tmp_path) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_cleans_up_everything_when_interrupted(tmp_path, signum):
    env = clean_env(tmp_path)
    # As from a terminal: a runner that starts the suite in the background (bash without job control) hands
    # its processes SIGINT ignored, and the demo, like any program, keeps an ignored SIGINT ignored.
    proc = subprocess.Popen(
        [SCRIPT, "demo", "--clients", "2", "--writes", "2000", "--work", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while "no lock:" not in seen:
            line = proc.stderr.readline()
            assert line, "demo ended early: %s" % seen
            seen += line
            assert time.monotonic() < deadline
        assert "private memcached" in seen
        assert len(leftovers(tmp_path)) >= 4  # ZEO, memcached, two clients
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if signum == signal.SIGINT else 1)
    assert "Traceback" not in rest
    assert demo_dirs(tmp_path) == []
    deadline = time.monotonic() + 10
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(tmp_path) == []


def test_demo_refuses_bad_sizes_naming_the_value(tmp_path):
    for args, word in ((["--clients", "0"], "'0'"), (["--work", "abc"], "'abc'"), (["--writes", "-3"], "'-3'")):
        proc = subprocess.run([SCRIPT, "demo", *args], env=clean_env(tmp_path), capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2
        assert word in proc.stderr


def test_table_and_summary_read_the_figures():
    plain = PhaseResult("nolock", 4, 15, 20.0, commits=60, executions=160, attempts=160, conflicts=100,
                        wall=3.0, final_count=60)
    locked = PhaseResult("zlock", 4, 15, 20.0, commits=60, executions=60, attempts=66, conflicts=0, busy=6,
                         wall=2.0, final_count=60)
    text = format_table([plain, locked])
    assert "1.50x" in text and "1.67" in text and "0.00" in text
    assert "LOST" not in text
    assert "(1.67 per commit)" in summary([plain, locked])
    locked.final_count = 59
    assert "LOST" in format_table([plain, locked]) and "LOST" in summary([plain, locked])


def test_a_write_that_failed_every_attempt_is_reported_as_failed_not_lost():
    """A client whose retries keep losing gives the write up (as a request that failed) and goes on; the
    count then matches the commits, so nothing is lost, and the table and summary say how many failed."""
    plain = PhaseResult("nolock", 2, 30, 1.0, commits=59, executions=700, attempts=700, conflicts=641,
                        failed=1, wall=3.0, final_count=59)
    locked = PhaseResult("zlock", 2, 30, 1.0, commits=60, executions=60, attempts=62, busy=2, wall=2.0,
                         final_count=60)
    assert plain.nothing_lost and locked.nothing_lost
    text = format_table([plain, locked])
    assert "59/60 (1 failed)" in text and "LOST" not in text
    assert "no lock: 1 of its writes failed every attempt" in summary([plain, locked])
    plain.final_count = 58
    assert not plain.nothing_lost and "LOST" in format_table([plain, locked])
