"""The catalog patch passes the test suites of what it patches, test by test, on every store.

The installed Products.ZCatalog and Products.PluginIndexes suites (336 tests) and Products.CMFCore's
catalog, indexing-queue, CMFCatalogAware and PortalFolder suites (113), under zope.testrunner, each group
in a process of its own (``tests/conformance.py``; ZCatalog and PluginIndexes apart, since ZCatalog's
suite imports every installed product, Products.CMFPlone's date-index patches among them): once
unpatched, then with the site's ``configure.zcml`` on memcached, on the file store and on the fallback
store with memcached down.  Any test whose outcome differs fails with its id.  Then once more with every
test inside a transaction of a real ZODB connection, so that zlock holds the lock for the transaction,
not only for the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from servers import free_port, unmeasured

HERE = os.path.dirname(os.path.abspath(__file__))
GROUPS = {"zcatalog": 195, "pluginindexes": 141, "cmfcore": 113}
#: The groups whose tests write catalogs (PluginIndexes' test indexes alone: the patch must change nothing there).
CATALOG_GROUPS = ("zcatalog", "cmfcore")


def run(group: str, mode: str, env: dict, *extra: str) -> dict:
    result = subprocess.run([sys.executable, os.path.join(HERE, "conformance.py"), group, mode, *extra],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def base_env() -> dict:
    return {name: value for name, value in unmeasured(os.environ).items() if not name.startswith("MEMCACHEDLOCK_")}


@pytest.fixture(scope="module")
def unpatched() -> dict:
    return {group: run(group, "unpatched", base_env())["outcomes"] for group in GROUPS}


def store_env(store: str, memcached_address: str, lock_dir: str) -> dict:
    env = base_env()
    if store == "memcached":
        env.update(MEMCACHEDLOCK_BACKEND="memcached", MEMCACHEDLOCK_SERVERS=memcached_address)
    elif store == "file":
        env.update(MEMCACHEDLOCK_BACKEND="file", MEMCACHEDLOCK_DIR=lock_dir)
    else:  # the fallback store while memcached is down: nothing listens on the port
        env.update(MEMCACHEDLOCK_BACKEND="fallback", MEMCACHEDLOCK_SERVERS="127.0.0.1:%d" % free_port(),
                   MEMCACHEDLOCK_DIR=lock_dir)
    return env


def differences(expected: dict, found: dict) -> dict:
    return {test: (expected.get(test), found.get(test)) for test in sorted(set(expected) | set(found))
            if expected.get(test) != found.get(test)}


def test_the_unpatched_suites_pass_as_published(unpatched):
    """The baseline the patched runs are compared with: every test found, every test passing."""
    for group, count in GROUPS.items():
        assert len(unpatched[group]) == count, group
        assert set(unpatched[group].values()) == {"ok"}, group


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memcached", "file", "fallback, memcached down"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_the_patched_suites_give_what_the_unpatched_give(unpatched, memcached_server, tmp_path, group, store):
    found = run(group, "patched", store_env(store, memcached_server.address, str(tmp_path / "locks")))
    assert differences(unpatched[group], found["outcomes"]) == {}
    # the patch was in force: catalog writes went through it (and only catalog writes)
    assert (found["calls"] > 0) == (group in CATALOG_GROUPS), found["calls"]


@pytest.mark.slow
@pytest.mark.parametrize("group", CATALOG_GROUPS)
def test_inside_transactions_zlock_holds_the_lock_and_changes_nothing(memcached_server, group, capsys):
    """Every test inside a ZODB transaction: the patched calls hold the lock for it, the outcomes stay."""
    env = store_env("memcached", memcached_server.address, "")
    expected = run(group, "unpatched", env, "--in-transactions")["outcomes"]
    found = run(group, "patched", env, "--in-transactions")
    assert differences(expected, found["outcomes"]) == {}
    assert found["held"] > 0.9 * found["calls"], found["calls"]
    with capsys.disabled():
        print("\n%s in transactions: %d of %d patched calls held the lock for the transaction"
              % (group, found["held"], found["calls"]))
