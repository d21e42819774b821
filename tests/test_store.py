"""The lock store as a zope.component utility: ``<memcachedlock:store>``, ``<utility>``,
overrides and conflicts, loaded with zope.configuration; real memcached servers, real locks.

The environment's memcached (the ``memcached`` fixture) is the default store;
a second memcached stands for the one a site configures in ZCML.  Where a
lock was stored is read back from each server with a store of its own.
"""

from __future__ import annotations

import pytest
from zope.component import getGlobalSiteManager, queryUtility
from zope.configuration import xmlconfig
from zope.configuration.config import ConfigurationConflictError
from zope.configuration.exceptions import ConfigurationError
from zope.testing.cleanup import cleanUp

from unimr.memcachedlock import Lock, config, registry
from unimr.memcachedlock.backends.file import FileBackend
from unimr.memcachedlock.interfaces import ILockBackend
from unimr.memcachedlock.registry import make_backend

from servers import MemcachedServer

NAMESPACES = ('xmlns="http://namespaces.zope.org/zope" '
              'xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock"')
PACKAGE = '<include package="unimr.memcachedlock" />'


@pytest.fixture(scope="module")
def site_memcached():
    """The memcached a site names in its ZCML (not the environment's)."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def clean(memcached):
    """A clean component registry around each test, the environment's memcached as default."""
    cleanUp()
    yield memcached
    cleanUp()


def zcml(body: str) -> str:
    return "<configure %s>%s</configure>" % (NAMESPACES, body)


def store_xml(address: str, **extra: str) -> str:
    attrs = "".join(' %s="%s"' % item for item in extra.items())
    return '<memcachedlock:store servers="%s"%s />' % (address, attrs)


def holder_in(address: str, key: str):
    """Who holds ``key`` in the memcached at ``address``, read with a store of its own."""
    store = make_backend(config.Settings(servers=config.parse_servers(address), backend="memcached"))
    try:
        return store.holder(Lock(key).name)
    finally:
        store.close()


def held_where(key: str, *addresses: str) -> list[str]:
    """The addresses whose memcached holds ``key`` while this process holds the lock."""
    with Lock(key):
        return [address for address in addresses if holder_in(address, key) is not None]


def test_without_a_registration_the_environment_decides(clean, site_memcached):
    xmlconfig.string(zcml(PACKAGE))
    assert queryUtility(ILockBackend) is None
    assert held_where("k", clean.address, site_memcached.address) == [clean.address]


def test_store_directive_registers_the_store_the_locks_use(clean, site_memcached):
    assert held_where("k", clean.address, site_memcached.address) == [clean.address]
    xmlconfig.string(zcml(PACKAGE + store_xml(site_memcached.address)))
    utility = queryUtility(ILockBackend)
    assert utility is registry.get_backend()
    assert site_memcached.address in repr(utility)
    assert held_where("k", clean.address, site_memcached.address) == [site_memcached.address]
    cleanUp()
    assert held_where("k", clean.address, site_memcached.address) == [clean.address]


def test_attributes_left_out_come_from_the_environment(clean, site_memcached, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "3.5")
    xmlconfig.string(zcml(PACKAGE + store_xml(site_memcached.address, connect_timeout="0.25")))
    store = registry.get_backend()
    assert store.kind == "memcached"  # MEMCACHEDLOCK_BACKEND=memcached, not the default fallback
    xmlconfig.string(zcml(PACKAGE))  # nothing new: the registration stays
    settings = store_settings_of(store)
    assert (settings.io_timeout, settings.connect_timeout) == (3.5, 0.25)


def store_settings_of(store) -> config.Settings:
    registration = next(r for r in getGlobalSiteManager().registeredUtilities() if r.provided is ILockBackend)
    assert registration.component is store
    return registration.factory.settings


def test_file_store_from_zcml(clean, tmp_path):
    xmlconfig.string(zcml(PACKAGE + '<memcachedlock:store backend="file" dir="%s" />' % tmp_path))
    with Lock("k"):
        assert registry.get_backend().kind == "file"
        assert holder_in(clean.address, "k") is None
        assert FileBackend(str(tmp_path)).holder(Lock("k").name) is not None


#: The store a ``<utility factory="...">`` builds (its directory is set by the test).
FILE_STORE_DIR: list[str] = []


def file_store() -> FileBackend:
    """A factory for ``<utility provides="...ILockBackend" factory="test_store.file_store"/>``."""
    return FileBackend(FILE_STORE_DIR[0])


def test_plain_utility_registration_changes_the_store(clean, tmp_path):
    FILE_STORE_DIR[:] = [str(tmp_path)]
    registry.get_backend()  # fill the cache first: the registration must drop it
    xmlconfig.string(zcml(PACKAGE + '<utility provides="unimr.memcachedlock.interfaces.ILockBackend" '
                                    'factory="test_store.file_store" />'))
    assert isinstance(registry.get_backend(), FileBackend)
    with Lock("k"):
        assert holder_in(clean.address, "k") is None
        assert FileBackend(str(tmp_path)).holder(Lock("k").name) is not None


def test_registering_and_unregistering_in_code_switch_the_store(clean, tmp_path):
    default = registry.get_backend()
    store = FileBackend(str(tmp_path))
    site_manager = getGlobalSiteManager()
    site_manager.registerUtility(store, ILockBackend)
    assert registry.get_backend() is store
    site_manager.unregisterUtility(store, ILockBackend)
    assert registry.get_backend() is default


def test_overrides_replace_the_store(clean, site_memcached, tmp_path):
    (tmp_path / "policy.zcml").write_text(zcml(PACKAGE + store_xml(clean.address)))
    (tmp_path / "overrides.zcml").write_text(zcml(store_xml(site_memcached.address)))
    xmlconfig.string(zcml('<include file="%s" /><includeOverrides file="%s" />'
                          % (tmp_path / "policy.zcml", tmp_path / "overrides.zcml")))
    assert held_where("k", clean.address, site_memcached.address) == [site_memcached.address]


@pytest.mark.parametrize("second", ["store", "utility"])
def test_two_registrations_conflict(clean, site_memcached, tmp_path, second):
    (tmp_path / "one.zcml").write_text(zcml(PACKAGE + store_xml(clean.address)))
    other = (store_xml(site_memcached.address) if second == "store" else
             '<utility provides="unimr.memcachedlock.interfaces.ILockBackend" factory="test_store.file_store" />')
    (tmp_path / "two.zcml").write_text(zcml(PACKAGE + other))
    with pytest.raises(ConfigurationConflictError) as info:
        xmlconfig.string(zcml('<include file="%s" /><include file="%s" />'
                              % (tmp_path / "one.zcml", tmp_path / "two.zcml")))
    assert "one.zcml" in str(info.value) and "two.zcml" in str(info.value)
    assert queryUtility(ILockBackend) is None


@pytest.mark.parametrize("attrs, word", [
    ({"servers": "127.0.0.1:0"}, "127.0.0.1:0"),
    ({"servers": "a:1,a:1"}, "a:1"),
    ({"backend": "redis"}, "redis"),
    ({"io_timeout": "-1"}, "-1"),
    ({"retry": "7200"}, "7200"),
    ({"prefix": "two words"}, "two words"),
])
def test_bad_attributes_name_the_value_the_file_and_the_line(clean, tmp_path, attrs, word):
    path = tmp_path / "site.zcml"
    servers = attrs.pop("servers", "127.0.0.1:11211")
    path.write_text(zcml("\n" + PACKAGE + "\n\n" + store_xml(servers, **attrs)))
    with pytest.raises(ConfigurationError) as info:
        xmlconfig.file(str(path))
    message = str(info.value)
    assert word in message and str(path) in message and "line 4" in message, message
    assert queryUtility(ILockBackend) is None
