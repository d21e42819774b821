"""The command against a hostile or broken world.

``break`` must not remove a lock that changed hands after its prompt, keys
are taken literally, every error is one line with its documented exit code,
and whatever a store or the environment holds is printed escaped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from test_cli import SCRIPT, read_question, run, script
from test_cli import holder as holder  # a fixture: pytest finds it by this name

from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.tools import cli

from servers import free_port


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


# --------------------------------------------------------------------------- break


def test_break_leaves_a_lock_that_changed_hands_after_the_prompt(store, holder):
    """A held the lock when the prompt showed it; B holds it when the user says y: B keeps it."""
    import pty

    first = holder("site:turn")
    master, slave = pty.openpty()
    proc = subprocess.Popen([SCRIPT, "break", "site:turn"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    os.close(slave)
    try:
        prompt = read_question(proc)
        assert b"pid %d" % first.proc.pid in prompt
        assert first.release() == "released"
        second = holder("site:turn")
        os.write(master, b"y\n")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "changed hands meanwhile: not broken" in out.decode()
    code, text = run("show", "site:turn")
    assert code == 0 and "pid %d" % second.proc.pid in text
    assert second.release() == "released", "the new holder's lock must not have been broken"


def test_break_takes_the_key_literally(store, holder):
    slash = holder("a/b")
    literal = holder("a%2Fb")
    proc = script("break", "--yes", "a%2Fb")
    assert proc.returncode == 0, proc.stderr
    assert "broke a%2Fb (was held by" in proc.stdout and "pid %d" % literal.proc.pid in proc.stdout
    assert literal.release() == "lost"
    assert run("show", "a/b")[0] == 0
    assert slash.release() == "released"


def test_a_key_that_is_not_text_is_listed_and_taken_as_a_name(memcached, holder):
    other = holder("bad\x01key")
    name = lock_name("bad\x01key")
    code, text = run("list")
    assert code == 0 and ("--name %s " % name) in text
    assert run("show", "--name", name)[0] == 0
    proc = script("break", "--yes", "--name", name)
    assert proc.returncode == 0, proc.stderr
    assert other.release() == "lost"
    proc = script("show", "--name", "no spaces please")
    assert proc.returncode == 2 and "not a lock name" in one_line(proc)


# --------------------------------------------------------------------------- one-line errors


def test_a_non_ascii_digit_in_the_port_is_a_one_line_configuration_error():
    env = dict(os.environ, MEMCACHEDLOCK_SERVERS="127.0.0.1:1\u00b2")
    proc = script("list", env=env)
    assert proc.returncode == 2
    assert one_line(proc).startswith(
        "memcachedlock list: configuration error: MEMCACHEDLOCK_SERVERS: bad port '1\u00b2'")


def test_stats_on_a_snapshot_with_string_fields(tmp_path):
    snap = {"format": 1, "host": "h", "pid": 1, "time": "now",
            "prefixes": {"app.f": {"counters": {"acquisitions": "12"}, "waits": ["a"], "holds": None}}}
    (tmp_path / "h-1.json").write_text(json.dumps(snap))
    proc = script("stats", "--dir", str(tmp_path))
    assert proc.returncode == 0 and proc.stderr == ""
    assert "app.f" in proc.stdout


@pytest.mark.parametrize("argv", [("show", "site:foo"), ("break", "--yes", "site:foo")])
def test_show_and_break_with_memcached_down_say_the_store_is_unreachable(argv, lock_dir):
    """The default (fallback) store, memcached down, nothing in the lock directory: unknown, rc 3."""
    env = dict(os.environ, MEMCACHEDLOCK_SERVERS="127.0.0.1:%d" % free_port())
    proc = script(*argv, env=env)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert one_line(proc).startswith("memcachedlock %s: lock store unreachable: memcached 127.0.0.1:" % argv[0])


def test_show_with_memcached_down_finds_a_lock_taken_in_the_lock_directory(lock_dir, holder, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    other = holder("site:outage")
    env = dict(os.environ, MEMCACHEDLOCK_BACKEND="fallback", MEMCACHEDLOCK_SERVERS="127.0.0.1:%d" % free_port())
    proc = script("show", "site:outage", env=env)
    assert proc.returncode == 0 and "pid %d" % other.proc.pid in proc.stdout
    assert "showing the lock directory only" in one_line(proc)
    other.release()


def test_list_never_creates_the_lock_directory(tmp_path):
    proc = script("list", "--backend", "file", "--dir", str(tmp_path / "not" / "there"))
    where = tmp_path / "not" / "there"
    assert (proc.returncode, proc.stdout) == (
        0, "no locks held in the lock directory %s (prefix memcachedlock:)\n" % where), proc.stderr
    assert not (tmp_path / "not").exists()
    proc = script("show", "k", "--backend", "file", "--dir", str(tmp_path / "absent"))
    assert proc.returncode == 1 and not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- the sanitiser


def test_clean_escapes_control_and_format_characters():
    assert cli.clean("plain text, ünïcode") == "plain text, ünïcode"
    assert cli.clean("a\x1b[31mb\x07\n\x9b\u202e") == "a\\x1b[31mb\\x07\\x0a\\x9b\\u202e"


def test_thread_names_and_planted_values_are_printed_escaped(memcached, holder):
    from pymemcache.client.base import Client

    other = holder("site:painted", "evil\x1b]0;owned\x07")
    client = Client(("127.0.0.1", memcached.port), default_noreply=False)
    client.set("memcachedlock:site:planted",
               b"mcl1 0123456789abcdef host%%1B%%5B2J 1 2 t%%1B%%5B31m %.3f %.3f" % (time.time(), time.time() + 30))
    try:
        for argv in (("list",), ("show", "site:painted"), ("show", "site:planted")):
            proc = script(*argv)
            assert proc.returncode == 0, proc.stderr
            assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
        assert "evil\\x1b]0;owned\\x07" in script("list").stdout
        shown = script("show", "site:planted").stdout
        assert "host\\x1b[2J" in shown and "t\\x1b[31m" in shown
        raw = script("show", "site:planted", "--json").stdout
        assert "\x1b" not in raw and json.loads(raw)["host"] == "host\x1b[2J"
    finally:
        other.release()


def test_stats_prints_prefixes_escaped(tmp_path):
    snap = {"format": 1, "host": "h", "pid": 1, "time": time.time(),
            "prefixes": {"evil\x1b[2J": {"counters": {"acquisitions": 3}, "waits": [0.1], "holds": [0.2]}}}
    (tmp_path / "h-1.json").write_text(json.dumps(snap))
    proc = script("stats", "--dir", str(tmp_path))
    assert proc.returncode == 0
    assert "\x1b" not in proc.stdout and "evil\\x1b[2J" in proc.stdout


def test_demo_error_has_one_prefix(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCACHEDLOCK_")}
    env.update(PATH="/nonexistent", TMPDIR=str(tmp_path))
    proc = script("demo", "--backend", "memcached", env=env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("memcachedlock demo: --backend memcached") and "demo: demo:" not in last


# --------------------------------------------------------------------------- bench


@pytest.mark.parametrize("argv, code, says", [
    (("--servers", "127.0.0.1:%d" % free_port()), 3, "lock store unreachable: memcached 127.0.0.1:"),
    (("--servers", "bad:port"), 2, "configuration error: bad port 'port' in memcached server 'bad:port'"),
    (("-n", "0"), 2, "argument -n: '0' must be at least 1"),
    (("--rounds", "0"), 2, "argument --rounds: '0' must be at least 1"),
    (("--duration", "nan"), 2, "argument --duration: 'nan' must be a finite number above 0"),
])
def test_bench_errors_are_one_line_with_their_exit_code(argv, code, says):
    proc = script("bench", "latency", *argv)
    assert proc.returncode == code, proc.stderr
    assert one_line(proc).startswith("memcachedlock bench: " + says)


def test_bench_without_memcached_on_path_is_one_line(tmp_path):
    proc = script("bench", "latency", env=dict(os.environ, PATH=str(tmp_path)))
    assert proc.returncode == 3
    assert "memcached is not installed" in one_line(proc)


def test_bench_reports_the_spread_over_rounds_and_judges_only_with_check(memcached):
    proc = script("bench", "latency", "-n", "50", "--rounds", "3", "--servers", memcached.address)
    assert proc.returncode == 0, proc.stderr
    assert "(min / median / max over rounds)" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| memcachedlock Lock (memcached)"))
    low, median, high = (float(x) for x in row.split("|")[2].split(" / "))
    assert low <= median <= high
    assert "goals" not in proc.stdout
    proc = script("bench", "latency", "-n", "50", "--rounds", "1", "--servers", memcached.address,
                  "--check", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == (1 if data["missed_goals"] else 0)
    assert len(data["latency"]["ratio_rounds"]) == 1


def test_missed_goals_name_each_figure():
    from unimr.memcachedlock.tools.bench import missed_goals

    fast = {"p50_ms": 0.3, "alternation": 1.0}
    assert missed_goals({"latency": {"ratio": 1.2}, "handoff": [{}, fast, fast]}) == []
    slow = {"p50_ms": 3.0, "alternation": 0.5}
    assert missed_goals({"latency": {"ratio": 1.85}, "handoff": [{}, slow, fast]}) == [
        "latency ratio 1.85 > 1.6", "handoff between processes p50 3.00 ms > 2 ms",
        "alternation between processes 50% < 90%"]
