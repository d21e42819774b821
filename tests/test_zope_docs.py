"""docs/zope.rst's ``memcachedlock show`` example, run against the lock a patched catalog_object takes.

Real memcached, a real ZCatalog at ``/plone/portal_catalog`` in a real ZODB,
catalog.zcml loaded with zope.configuration, and the installed console
script run as a user would while ``catalog_object``'s transaction holds the
lock.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import transaction
import ZODB
from OFS.Application import Application
from OFS.Folder import Folder
from OFS.SimpleItem import SimpleItem
from Products.ZCatalog.ZCatalog import ZCatalog
from test_cli import script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import catalog_contention  # noqa: E402  (benchmarks/ is not a package)


def documented_show() -> tuple[list[str], dict[str, str]]:
    """The ``$ memcachedlock show ...`` command in docs/zope.rst and the fields it prints there."""
    with open(os.path.join(ROOT, "docs", "zope.rst"), encoding="utf-8") as file:
        lines = file.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("$ memcachedlock show "))
    command = shlex.split(lines[start].strip()[2:])
    fields = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        field, _, value = line.strip().partition(" ")
        fields[field] = value.strip()
    return command, fields


@pytest.fixture
def catalog_site(catalog_patch):
    """/plone/portal_catalog in a real ZODB, with catalog.zcml loaded."""
    db = ZODB.DB(None)
    conn = db.open()
    with transaction.manager:
        app = conn.root()["Application"] = Application()
        app._setObject("plone", Folder("plone"), suppress_events=True)
        app.plone._setObject("portal_catalog", ZCatalog("portal_catalog"), suppress_events=True)
    yield conn.root()["Application"].plone
    transaction.abort()
    conn.close()
    db.close()


def fields_of(output: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in output.splitlines())


def run_show(command: list[str]) -> subprocess.CompletedProcess:
    """The console script, in the environment the ``memcached`` fixture set."""
    assert command[:2] == ["memcachedlock", "show"], command
    return script(*command[1:])


def test_documented_show_finds_the_lock_refresh_catalog_holds(catalog_site, memcached):
    command, fields = documented_show()
    assert fields["key"] == "Products.ZCatalog.ZCatalog.ZCatalog:/plone/portal_catalog"
    txn = transaction.begin()
    catalog_site.portal_catalog.refreshCatalog()  # policy always: held until the transaction ends
    during_commit: list[subprocess.CompletedProcess] = []
    stored = "Products.ZCatalog.ZCatalog.ZCatalog:%2Fplone%2Fportal_catalog"
    txn.addBeforeCommitHook(lambda: during_commit.extend([
        run_show(command),
        run_show(["memcachedlock", "show", "--name", stored]),  # the stored lock name
    ]))
    transaction.commit()
    shown, by_name = during_commit
    assert shown.returncode == 0, shown.stderr
    printed = fields_of(shown.stdout)
    assert printed["key"] == fields["key"]
    assert printed["store"] == fields["store"] == "memcached"
    assert printed["thread"].startswith("MainThread") and printed["pid"] == str(os.getpid())
    assert by_name.returncode == 0, by_name.stderr
    assert fields_of(by_name.stdout)["token"] == printed["token"]
    after = run_show(command)
    assert after.returncode == 1 and "is not locked" in after.stdout


def test_documented_show_finds_the_lock_catalog_object_holds(catalog_site, memcached):
    """Policy always (the site default): catalog_object holds the lock until the commit ends."""
    command, fields = documented_show()
    transaction.begin()
    catalog_site.portal_catalog.catalog_object(SimpleItem(), "/plone/front-page")
    shown = run_show(command)
    transaction.commit()
    assert shown.returncode == 0, shown.stderr
    assert fields_of(shown.stdout)["key"] == fields["key"]
    assert run_show(command).returncode == 1


def test_show_counts_the_optimistic_commit_of_catalog_object(catalog_site, memcached):
    """catalog_object's commit with policy on-conflict (overridden) passes the commit gate: show says so."""
    catalog_contention.relock_catalog("on-conflict", 3)
    command, _ = documented_show()
    txn = transaction.begin()
    catalog_site.portal_catalog.catalog_object(SimpleItem(), "/plone/front-page")
    during_commit: list[subprocess.CompletedProcess] = []
    txn.addBeforeCommitHook(lambda: during_commit.append(run_show(command)))  # runs after zlock's hook
    transaction.commit()
    shown, = during_commit
    assert shown.returncode == 1
    assert shown.stdout == ("Products.ZCatalog.ZCatalog.ZCatalog:/plone/portal_catalog is not locked, "
                            "1 optimistic commit(s) passing\n")
    after = run_show(command)
    assert after.stdout == "Products.ZCatalog.ZCatalog.ZCatalog:/plone/portal_catalog is not locked\n"
