"""Bad input gets a clear error naming the bad value, or documented safe handling."""

from __future__ import annotations

import math
import os

import pytest

from unimr.memcachedlock import config, registry
from unimr.memcachedlock.decorators import lock, rlock
from unimr.memcachedlock.errors import (
    ConfigurationError,
    DontLock,
    InvalidArgument,
    InvalidKey,
    MemcachedLockError,
    TimeoutTooLarge,
)
from unimr.memcachedlock.keys import MAX_NAME_LENGTH, lock_name, shown
from unimr.memcachedlock.locks import Lock, RLock
from unimr.memcachedlock.zodb import zlock

HOSTILE_KEYS = [
    "a b", "a\r\nset x 0 0 1\r\nx", "nul\0byte", "../../etc/passwd", ".", "..", "/", "%20", "#",
    "\u00e9t\u00e9 \u2603", "\udcff surrogate", "x" * 5000, b"\xff\xfe raw bytes", "", 0, -1, 2**80,
]


def test_hostile_keys_get_safe_distinct_names(store):
    names = set()
    for key in HOSTILE_KEYS:
        name = lock_name(key)
        assert len(name) <= MAX_NAME_LENGTH and name.isascii()
        assert not any(c.isspace() or c in "/\0" for c in name)
        names.add(name)
    assert len(names) == len(HOSTILE_KEYS)
    held = []
    for key in HOSTILE_KEYS:
        lock_obj = Lock(key, timeout=5)
        assert lock_obj.acquire(blocking=False), key
        held.append(lock_obj)
    assert len(registry.get_backend().list_locks()) == len(HOSTILE_KEYS)
    for key in HOSTILE_KEYS:
        assert not Lock(key).acquire(blocking=False)
    for lock_obj in held:
        lock_obj.release()
    assert registry.get_backend().list_locks() == []


def test_huge_keys_differing_at_the_end_are_different_locks(store):
    first, second = "p" * 100000 + "1", "p" * 100000 + "2"
    a, b = Lock(first), Lock(second)
    assert a.acquire(blocking=False) and b.acquire(blocking=False)
    a.release()
    b.release()


@pytest.mark.parametrize("key", [None, 1.5, ["list"], object(), True, {"a": 1}])
def test_non_string_keys_are_refused(key):
    with pytest.raises(InvalidKey) as info:
        Lock(key)
    assert isinstance(info.value, TypeError) and isinstance(info.value, MemcachedLockError)
    assert type(key).__name__ in str(info.value)


@pytest.mark.parametrize("key, text", [
    (b"Products.ZCatalog.ZCatalog.ZCatalog:/plone/portal_catalog",
     "'Products.ZCatalog.ZCatalog.ZCatalog:/plone/portal_catalog'"),
    ("app.views.counter:front page", "'app.views.counter:front page'"),
    ("caf\u00e9", "'caf\u00e9'"),
])
def test_messages_show_a_key_as_text(key, text):
    """LockBusy and LockTimeout name the key as the operator reads it in ``memcachedlock list``."""
    assert shown(key) == text


@pytest.mark.parametrize("value", [-1, 0, float("nan"), float("inf"), 1e12, "5", True, None])
@pytest.mark.parametrize("what", ["timeout", "interval"])
def test_bad_lease_and_interval_name_the_value(what, value):
    with pytest.raises(InvalidArgument) as info:
        Lock("k", **{what: value})
    assert isinstance(info.value, ValueError)
    assert repr(value) in str(info.value)
    with pytest.raises(InvalidArgument):
        lock(lambda fun: "k", **{what: value})
    with pytest.raises(InvalidArgument):
        rlock(lambda fun: "k", **{what: value})


def test_the_decorators_refuse_at_decoration_an_interval_the_lock_refuses():
    """One check for every way in: an interval above an hour fails where it is given, not at the first call."""
    with pytest.raises(InvalidArgument, match="7200"):
        Lock("k", interval=7200)
    for decorator in (lock, rlock, zlock):
        with pytest.raises(InvalidArgument, match="lock interval must be above 0 and at most 3600 seconds, not 7200"):
            decorator(lambda fun: "k", interval=7200)


@pytest.mark.parametrize("factory", [Lock, RLock])
def test_acquire_arguments_follow_threading(store, factory):
    lock_obj = factory("args")
    with pytest.raises(ValueError):
        lock_obj.acquire(timeout=-5)
    with pytest.raises(ValueError):
        lock_obj.acquire(timeout=math.nan)
    with pytest.raises(ValueError):
        lock_obj.acquire(blocking=False, timeout=1)
    with pytest.raises(OverflowError) as info:
        lock_obj.acquire(timeout=1e20)
    assert isinstance(info.value, TimeoutTooLarge)
    with pytest.raises(TypeError):
        lock_obj.acquire(timeout="1")
    assert lock_obj.acquire(timeout=0)
    lock_obj.release()


def test_bad_wait_is_refused_at_decoration():
    for value in (0, -1, float("nan")):
        with pytest.raises(InvalidArgument):
            lock(lambda fun: "k", wait=value)
    with pytest.raises(TypeError, match="timout"):
        lock(lambda fun: "k", timout=5)


def test_get_key_that_raises_propagates_and_takes_no_lock(store):
    class Boom(Exception):
        pass

    def get_key(fun, x):
        raise Boom("no key for %r" % x)

    @lock(get_key)
    def work(x):
        raise AssertionError("must not run")

    with pytest.raises(Boom, match="no key for 3"):
        work(3)
    assert registry.get_backend().list_locks() == []


def test_get_key_returning_garbage_names_it(store):
    def get_key(fun, x):
        return ["not", "a", "key"]

    @lock(get_key)
    def work(x):
        raise AssertionError("must not run")

    with pytest.raises(InvalidKey) as info:
        work(1)
    assert "get_key" in str(info.value) and "list" in str(info.value)


def test_dont_lock_calls_unlocked(store):
    def get_key(fun, x):
        raise DontLock()

    @lock(get_key)
    def work(x):
        return x * 2

    assert work(21) == 42


@pytest.mark.parametrize("servers", [
    ",", "127.0.0.1:11211,", "host:1:2", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:abc",
    "127.0.0.1:", "[::1", "[not-an-ip]:11211", "a b:11211", "unix:relative.sock",
    "127.0.0.1:11211,127.0.0.1:11211",
])
def test_malformed_server_list_names_the_entry(servers, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", servers)
    registry.reset()
    with pytest.raises(ConfigurationError) as info:
        config.get_settings()
    assert isinstance(info.value, ValueError)
    assert repr(servers.split(",")[0].strip()) in str(info.value) or repr(servers) in str(info.value) \
        or "listed twice" in str(info.value)
    with pytest.raises(ConfigurationError):
        Lock("k").acquire(blocking=False)
    with pytest.raises(ConfigurationError):
        registry.configure(servers=servers)


@pytest.mark.parametrize("name, value", [
    ("MEMCACHEDLOCK_BACKEND", "redis"), ("MEMCACHEDLOCK_IO_TIMEOUT", "nan"),
    ("MEMCACHEDLOCK_IO_TIMEOUT", "-1"), ("MEMCACHEDLOCK_CONNECT_TIMEOUT", "soon"),
    ("MEMCACHEDLOCK_RETRY", "0"), ("MEMCACHEDLOCK_PREFIX", "has space"),
])
def test_bad_settings_name_the_value(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    registry.reset()
    with pytest.raises(ConfigurationError) as info:
        config.get_settings()
    assert value in str(info.value)


def test_good_server_forms_parse():
    parsed = config.parse_servers("127.0.0.1, [::1]:11212,/run/mc.sock,unix:/tmp/m.sock,localhost:1")
    assert [str(s) for s in parsed] == ["127.0.0.1:11211", "[::1]:11212", "/run/mc.sock", "/tmp/m.sock", "localhost:1"]


def test_lock_dir_under_a_file_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(blocker / "locks"))
    registry.reset()
    with pytest.raises(ConfigurationError) as info:
        Lock("k").acquire()
    assert str(blocker / "locks") in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not os.path.exists(str(blocker / "locks"))
