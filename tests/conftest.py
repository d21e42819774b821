"""Shared fixtures: real memcached servers and a clean lock configuration per test."""

from __future__ import annotations

import os

import pytest

from unimr.memcachedlock import registry
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


@pytest.fixture(params=["memcached", "file", "fallback"])
def store(request, memcached, lock_dir, monkeypatch):
    """Each of the three stores in turn (the session's memcached, a private lock directory)."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", request.param)
    registry.reset()
    assert registry.get_backend().kind == request.param
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


@pytest.fixture
def zeo_server():
    """A real ZEO server of the test's own (runzeo on a free loopback port)."""
    from zeoserver import ZEOServer

    with ZEOServer() as server:
        yield server


@pytest.fixture
def catalog_patch(memcached):
    """The site-level configure.zcml loaded (package plus catalog.zcml); undone afterwards."""
    from zope.configuration import xmlconfig
    from zope.testing.cleanup import cleanUp

    cleanUp()
    xmlconfig.file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configure.zcml"))
    yield memcached
    cleanUp()
