"""The lock and rlock decorators, and the 2009 import path, on every store."""

from __future__ import annotations

import threading
import time

import pytest

import unimr.memcachedlock as package
from unimr.memcachedlock import DontLock, Lock, LockTimeout, SelfDeadlock, memcachedlock
from unimr.memcachedlock.keys import lock_name

from overlap import OverlapLog

pytestmark = pytest.mark.usefixtures("store")


def by_first(fun, *args, **kw):
    return str(args[0])


def test_old_import_path_gives_the_same_objects():
    from unimr.memcachedlock import memcachedlock as old

    for name in ("lock", "rlock", "zlock", "DontLock", "lock_getter", "rlock_getter"):
        assert getattr(old, name) is getattr(package, name)
    assert set(package.__all__) >= {"lock", "rlock", "zlock", "DontLock", "lock_getter", "rlock_getter"}


def test_decorated_function_keeps_name_doc_and_result():
    @memcachedlock.lock(by_first)
    def double(x):
        """Twice x."""
        return 2 * x

    assert double(21) == 42
    assert double.__name__ == "double"
    assert double.__doc__ == "Twice x."
    assert double.__wrapped__(1) == 2


def test_get_key_receives_the_function_and_the_call_arguments():
    seen = []

    def get_key(fun, *args, **kw):
        seen.append((fun, args, kw))
        return "k"

    def target(a, b=None):
        return a

    wrapped = memcachedlock.lock(get_key)(target)
    wrapped(1, b=2)
    assert seen == [(target, (1,), {"b": 2})]


def test_lock_name_is_module_qualname_and_key():
    names = []

    class Holder:
        @memcachedlock.lock(lambda fun, self, key: key)
        def method(self, key):
            names.append([h.name for h in package.get_backend().list_locks()])
            return key

    assert Holder().method("catalog") == "catalog"
    qualname = "test_lock_name_is_module_qualname_and_key.<locals>.Holder.method"
    expected = lock_name("%s.%s:%s" % (__name__, qualname, "catalog"))
    assert names == [[expected]]


def test_works_on_methods_with_instance_keys():
    class Catalog:
        def __init__(self, path):
            self.path = path

        def getPhysicalPath(self):
            return ("", "site", self.path)

        @memcachedlock.lock(lambda fun, self, *a, **kw: "/".join(self.getPhysicalPath()))
        def catalog_object(self, obj, uid=None):
            return (self.path, obj, uid)

    assert Catalog("cat").catalog_object("doc", uid="/doc") == ("cat", "doc", "/doc")


def test_dontlock_calls_unlocked():
    held_during_call = []

    def get_key(fun, x):
        if x is None:
            raise DontLock()
        return str(x)

    @memcachedlock.lock(get_key)
    def work(x):
        held_during_call.append(len(package.get_backend().list_locks()))
        return x

    assert work(None) is None
    assert work("k") == "k"
    assert held_during_call == [0, 1]


def test_other_get_key_errors_propagate_and_nothing_is_called():
    calls = []

    def get_key(fun, x):
        raise LookupError("no key for %r" % x)

    @memcachedlock.lock(get_key)
    def work(x):
        calls.append(x)

    with pytest.raises(LookupError):
        work(1)
    assert calls == []


def test_exceptions_propagate_and_release_the_lock():
    @memcachedlock.lock(by_first)
    def fail(key):
        raise ZeroDivisionError(key)

    with pytest.raises(ZeroDivisionError):
        fail("exc")
    name = "%s.%s:exc" % (__name__, fail.__qualname__)
    assert not Lock(name).locked()


def test_decorator_serialises_threads(tmp_path):
    log = OverlapLog(tmp_path / "log")

    @memcachedlock.lock(by_first, interval=0.005)
    def critical(key, who):
        log.enter(key, who)
        time.sleep(0.002)
        log.exit(key, who)

    threads = [
        threading.Thread(target=lambda n=n: [critical("k%d" % (i % 2), "t%d" % n) for i in range(10)])
        for n in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert log.count() == 50
    assert log.violations() == []


def test_lock_decorator_refuses_reentry_instead_of_hanging():
    @memcachedlock.lock(by_first)
    def outer(key, depth):
        return outer(key, depth - 1) if depth else "bottom"

    started = time.monotonic()
    with pytest.raises(SelfDeadlock) as info:
        outer("re", 1)
    assert isinstance(info.value, RuntimeError)
    assert "rlock" in str(info.value)
    assert time.monotonic() - started < 2
    assert outer("re", 0) == "bottom", "the lock was released after the error"


def test_rlock_decorator_reenters():
    depths = []

    @memcachedlock.rlock(by_first)
    def recurse(key, depth):
        depths.append(depth)
        return recurse(key, depth - 1) if depth else "done"

    assert recurse("rr", 3) == "done"
    assert depths == [3, 2, 1, 0]
    assert not Lock("%s.%s:rr" % (__name__, recurse.__qualname__)).locked()


def test_rlock_decorator_excludes_other_threads(tmp_path):
    log = OverlapLog(tmp_path / "log")

    @memcachedlock.rlock(by_first, interval=0.005)
    def nested(key, who, depth=1):
        if depth:
            log.enter(key, who)
            nested(key, who, depth - 1)
            time.sleep(0.002)
            log.exit(key, who)

    threads = [threading.Thread(target=lambda n=n: [nested("r", "t%d" % n) for _ in range(8)]) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert log.count() == 32 and log.violations() == []


def test_decorated_call_waits_at_most_wait_then_raises_lock_timeout():
    @memcachedlock.lock(by_first, timeout=30, wait=0.3)
    def work(key):
        return key

    holder = Lock("%s.%s:held" % (__name__, work.__qualname__))
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(LockTimeout) as info:
        work("held")
    assert isinstance(info.value, TimeoutError)
    assert "held" in str(info.value)
    assert time.monotonic() - started < 2
    holder.release()
    assert work("held") == "held"


def test_intervall_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="interval"):
        decorator = memcachedlock.lock(by_first, intervall=0.01)

    @decorator
    def work(key):
        return key

    assert work("old") == "old"


@pytest.mark.parametrize("options", [dict(timeout=0), dict(timeout=-3), dict(interval=float("nan")), dict(timeout="30"),
                                     dict(wait=-1)])
def test_bad_decorator_options_fail_at_decoration(options):
    with pytest.raises(ValueError) as info:
        memcachedlock.lock(by_first, **options)
    assert repr(list(options.values())[0]) in str(info.value)


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match="tiemout"):
        memcachedlock.lock(by_first, tiemout=3)


def test_get_key_returning_unusable_type_is_a_clear_error():
    @memcachedlock.lock(lambda fun, x: x)
    def work(x):
        return x

    with pytest.raises(TypeError) as info:
        work(["list"])
    assert "get_key" in str(info.value) and "list" in str(info.value)
    assert work(7) == 7
    assert work(b"bytes") == b"bytes"
