"""The core needs neither Zope nor ZODB: without them zlock behaves like rlock.

A child interpreter blocks the imports (``sys.modules[name] = None`` makes
``import name`` fail), so this runs against the real package and a real
memcached, not a stub.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    for name in ("ZODB", "ZEO", "transaction", "Zope2", "OFS", "Products", "zope.component",
                 "zope.configuration", "persistent"):
        sys.modules[name] = None
    import unimr.memcachedlock as package
    from unimr.memcachedlock import memcachedlock

    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ZODB", "transaction", "Zope2", "OFS", "Products")
                    and sys.modules[m] is not None)
    assert loaded == [], loaded

    calls = []

    @memcachedlock.zlock(lambda fun, depth: "k")
    def nested(depth):
        calls.append(package.get_backend().holder(package.Lock("x").name) is None)
        return nested(depth - 1) if depth else "done"

    assert nested(2) == "done"
    assert issubclass(package.LockBusy, package.MemcachedLockError)
    with package.Lock("plain") as held:
        assert held.locked()
    print("ok", len(calls))
    """
)


def test_core_and_zlock_work_without_zodb_and_zope(memcached, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", memcached.address)
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "3"]
