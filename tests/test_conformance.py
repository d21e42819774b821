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
from concurrent.futures import Future, ThreadPoolExecutor

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


#: One conformance run: (group, mode, store or None for no store, in transactions).
RunKey = tuple[str, str, str | None, bool]


def keys_of(item: pytest.Item) -> list[RunKey]:
    """The runs a test of this module compares."""
    params = getattr(item, "callspec", None)
    group, store = (params.params.get("group"), params.params.get("store")) if params else (None, None)
    name = item.name.split("[")[0]
    if name == "test_the_unpatched_suites_pass_as_published":
        return [(g, "unpatched", None, False) for g in GROUPS]
    if name == "test_the_patched_suites_give_what_the_unpatched_give":
        return [(group, "unpatched", None, False), (group, "patched", store, False)]
    if name == "test_inside_transactions_zlock_holds_the_lock_and_changes_nothing":
        return [(group, "unpatched", "memcached", True), (group, "patched", "memcached", True)]
    return []


class Runs:
    """The runs the selected tests of this module need, started together, two at a time: each is one
    CPU-bound process of 3-10 s and the machine has two cores.  Each run has lock keys (a prefix) and a
    lock directory of its own, so runs side by side never meet on a lock."""

    def __init__(self, memcached_address: str, directory: str, keys: list[RunKey]) -> None:
        self._address = memcached_address
        self._directory = directory
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="conformance")
        self._futures: dict[RunKey, Future[dict]] = {}
        for key in keys:
            self._submit(key)

    def _submit(self, key: RunKey) -> Future[dict]:
        if key not in self._futures:
            group, mode, store, in_transactions = key
            number = len(self._futures)
            env = base_env() if store is None else store_env(
                store, self._address, os.path.join(self._directory, "locks-%d" % number))
            env["MEMCACHEDLOCK_PREFIX"] = "conformance-%d:" % number
            extra = ("--in-transactions",) if in_transactions else ()
            self._futures[key] = self._pool.submit(run, group, mode, env, *extra)
        return self._futures[key]

    def __getitem__(self, key: RunKey) -> dict:
        return self._submit(key).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runs(request, memcached_server, tmp_path_factory):
    here = [item for item in request.session.items if item.module is request.module]
    keys = list(dict.fromkeys(key for item in here for key in keys_of(item)))
    started = Runs(memcached_server.address, str(tmp_path_factory.mktemp("conformance")), keys)
    yield started
    started.close()


def differences(expected: dict, found: dict) -> dict:
    return {test: (expected.get(test), found.get(test)) for test in sorted(set(expected) | set(found))
            if expected.get(test) != found.get(test)}


def test_the_unpatched_suites_pass_as_published(runs):
    """The baseline the patched runs are compared with: every test found, every test passing."""
    for group, count in GROUPS.items():
        outcomes = runs[group, "unpatched", None, False]["outcomes"]
        assert len(outcomes) == count, group
        assert set(outcomes.values()) == {"ok"}, group


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memcached", "file", "fallback, memcached down"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_the_patched_suites_give_what_the_unpatched_give(runs, group, store):
    found = runs[group, "patched", store, False]
    assert differences(runs[group, "unpatched", None, False]["outcomes"], found["outcomes"]) == {}
    # the patch was in force: catalog writes went through it (and only catalog writes)
    assert (found["calls"] > 0) == (group in CATALOG_GROUPS), found["calls"]


@pytest.mark.slow
@pytest.mark.parametrize("group", CATALOG_GROUPS)
def test_inside_transactions_zlock_holds_the_lock_and_changes_nothing(runs, group, capsys):
    """Every test inside a ZODB transaction: the patched calls hold the lock for it, the outcomes stay."""
    expected = runs[group, "unpatched", "memcached", True]["outcomes"]
    found = runs[group, "patched", "memcached", True]
    assert differences(expected, found["outcomes"]) == {}
    assert found["held"] > 0.9 * found["calls"], found["calls"]
    with capsys.disabled():
        print("\n%s in transactions: %d of %d patched calls held the lock for the transaction"
              % (group, found["held"], found["calls"]))
