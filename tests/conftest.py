"""Shared fixtures: real memcached servers and a clean lock configuration per test."""

from __future__ import annotations

import os

import pytest

from unimr.memcachedlock import registry
from unimr.memcachedlock.backends.fallback import FallbackBackend
from unimr.memcachedlock.backends.file import FileBackend
from unimr.memcachedlock.backends.memcached import MemcachedBackend
from unimr.memcachedlock.zodb import adaptive, early

from servers import MemcachedServer


@pytest.fixture(scope="session")
def memcached_server():
    """One memcached for the whole session (flushed per test by ``memcached``)."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def memcached(memcached_server, monkeypatch):
    """The session's memcached, flushed, configured as the only lock store."""
    memcached_server.flush()
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", memcached_server.address)
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
    registry.reset()
    yield memcached_server
    registry.reset()


@pytest.fixture
def private_memcached(monkeypatch):
    """A memcached of the test's own, to kill, stop or restart."""
    with MemcachedServer() as server:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", server.address)
        monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
        registry.reset()
        yield server
        registry.reset()


#: Every lock store; a test that asks for ``store`` runs on each of them unless it says what it needs.
STORES = ("memcached", "file", "fallback")

#: What each store can do, by store kind: what the store classes declare (``ILockBackend.capabilities``, explained
#: in ``backends.base.CAPABILITIES``), and for the tests ``memcached``: the store talks to the session's memcached,
#: whose items and counters a test may read, or whose server it may stop.
CAPABILITIES: dict[str, frozenset[str]] = {
    "memcached": MemcachedBackend.capabilities | {"memcached"},
    "file": FileBackend.capabilities,
    "fallback": FallbackBackend.capabilities | {"memcached"},
}


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*capabilities): run the test only on stores that have them")
    config.addinivalue_line("markers", "stores(*kinds, reason): run the test only on these stores, for reason")


def stores_for(definition) -> list[str]:
    """The stores a test asking for ``store`` runs on: those with every capability of its ``needs``
    marks and, if it has ``stores`` marks, named by each of them (with a reason)."""
    kinds = list(STORES)
    for mark in definition.iter_markers("needs"):
        unknown = set(mark.args) - set().union(*CAPABILITIES.values())
        assert not unknown, "%s needs unknown capabilities %s" % (definition.nodeid, sorted(unknown))
        kinds = [kind for kind in kinds if CAPABILITIES[kind].issuperset(mark.args)]
    for mark in definition.iter_markers("stores"):
        assert mark.kwargs.get("reason"), "%s: a stores() mark says why" % definition.nodeid
        assert set(mark.args) <= set(STORES), mark.args
        kinds = [kind for kind in kinds if kind in mark.args]
    assert kinds, "%s runs on no store" % definition.nodeid
    return kinds


def pytest_generate_tests(metafunc):
    """A test that asks for ``store`` (directly or through a fixture) is generated once per store
    it can run on: never generated, rather than skipped, where a store lacks what it needs."""
    given = any("store" in _argnames(mark) for mark in metafunc.definition.iter_markers("parametrize"))
    if "store" in metafunc.fixturenames and not given:
        metafunc.parametrize("store", stores_for(metafunc.definition), indirect=True)
    else:
        marked = any(metafunc.definition.iter_markers("needs")) or any(metafunc.definition.iter_markers("stores"))
        assert not marked, "%s has store marks but no store fixture" % metafunc.definition.nodeid


def _argnames(mark) -> list[str]:
    """The names a ``parametrize`` mark gives values to (a test may still list its stores itself)."""
    names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


@pytest.fixture
def store(request, memcached, lock_dir, monkeypatch):
    """Each store in turn (the session's memcached, a private lock directory): see ``pytest_generate_tests``."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", request.param)
    registry.reset()
    backend = registry.get_backend()
    assert backend.kind == request.param
    yield request.param
    registry.reset()


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    """A private lock directory for the file backend."""
    path = tmp_path / "locks"
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch):
    """No test sees another's settings or the developer's environment."""
    for name in list(os.environ):
        if name.startswith("MEMCACHEDLOCK_"):
            monkeypatch.delenv(name)
    registry.reset()
    adaptive.reset()
    early.reset()
    yield
    registry.reset()
    adaptive.reset()
    early.reset()


@pytest.fixture(scope="session")
def _zeo_spares():
    from zeoserver import ZEOServerSpares

    spares = ZEOServerSpares()
    yield spares
    spares.close()


@pytest.fixture
def zeo_server(_zeo_spares):
    """A real ZEO server of the test's own (runzeo on a free loopback port, fresh storage)."""
    server = _zeo_spares.take()
    yield server
    _zeo_spares.give_back(server)


@pytest.fixture
def catalog_patch(memcached):
    """The site-level configure.zcml loaded (package plus catalog.zcml); undone afterwards."""
    from zope.configuration import xmlconfig
    from zope.testing.cleanup import cleanUp

    cleanUp()
    xmlconfig.file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configure.zcml"))
    yield memcached
    cleanUp()
