"""Several memcached servers: a fixed rendezvous hash, and one dead server affects only its keys."""

from __future__ import annotations

import pytest

from unimr.memcachedlock import config, registry
from unimr.memcachedlock.backends.fallback import FallbackBackend
from unimr.memcachedlock.backends.file import FileLease
from unimr.memcachedlock.backends.memcached import MemcachedBackend, MemcachedLease
from unimr.memcachedlock.errors import BackendUnavailable
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.locks import Lock

from servers import MemcachedServer


@pytest.fixture
def three_servers(lock_dir, monkeypatch):
    servers = [MemcachedServer().start() for _ in range(3)]
    try:
        monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", ",".join(s.address for s in servers))
        monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "fallback")
        monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "0.3")
        monkeypatch.setenv("MEMCACHEDLOCK_CONNECT_TIMEOUT", "0.3")
        monkeypatch.setenv("MEMCACHEDLOCK_RETRY", "0.3")
        registry.reset()
        yield servers
    finally:
        for server in servers:
            server.kill()
        registry.reset()


def keys_by_server(backend: MemcachedBackend, count: int = 60) -> dict[str, list[str]]:
    mapping: dict[str, list[str]] = {str(s): [] for s in backend.servers}
    for i in range(count):
        key = "doc-%d" % i
        mapping[str(backend.server_for(lock_name(key)))].append(key)
    return mapping


def test_hash_is_fixed_and_spreads(three_servers):
    backend = registry.get_backend()
    assert isinstance(backend, FallbackBackend)
    mapping = keys_by_server(backend.primary)
    assert all(len(keys) >= 5 for keys in mapping.values())
    # the same list in another order maps every key to the same server
    reordered = MemcachedBackend(config.parse_servers(",".join(s.address for s in reversed(three_servers))))
    for server, keys in mapping.items():
        assert all(str(reordered.server_for(lock_name(k))) == server for k in keys)
    reordered.close()


def test_one_dead_server_affects_only_its_keys(three_servers):
    backend = registry.get_backend()
    mapping = keys_by_server(backend.primary)
    dead = three_servers[1]
    dead.kill()
    for server in three_servers:
        for key in mapping[server.address]:
            with Lock(key) as taken:
                if server is dead:
                    assert isinstance(taken.lease, FileLease), key
                else:
                    assert isinstance(taken.lease, MemcachedLease), key
                    # stored on its own server, never moved to another one
                    assert taken.lease.server.address == backend.primary.server_for(taken.name).address
                    assert str(taken.lease.server) == server.address
    assert backend.primary.servers[1].is_down
    assert not backend.primary.servers[0].is_down and not backend.primary.servers[2].is_down


def test_dead_server_keys_are_not_remapped_in_memcached_only_mode(three_servers, monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
    registry.reset()
    backend = registry.get_backend()
    mapping = keys_by_server(backend)
    three_servers[2].kill()
    for key in mapping[three_servers[2].address]:
        with pytest.raises(BackendUnavailable):
            Lock(key).acquire(timeout=0.1)
    for key in mapping[three_servers[0].address]:
        with Lock(key) as taken:
            assert str(taken.lease.server) == three_servers[0].address


def test_dead_server_comes_back_and_keeps_its_keys(three_servers):
    backend = registry.get_backend()
    mapping = keys_by_server(backend.primary)
    victim = three_servers[0]
    victim.kill()
    key = mapping[victim.address][0]
    with Lock(key) as taken:
        assert isinstance(taken.lease, FileLease)
    victim.start()
    import time

    time.sleep(0.35)
    with Lock(key) as taken:
        assert isinstance(taken.lease, MemcachedLease)
        assert str(taken.lease.server) == victim.address
