"""Run the installed ZCatalog, PluginIndexes and CMFCore test suites, patched or not; print each test's outcome.

Usage: ``python tests/conformance.py zcatalog|pluginindexes|cmfcore unpatched|patched [--in-transactions]``: one
process per group of suites, as their own runs (their layers and clean-ups do not mix).  The lock store comes from the
environment (``MEMCACHEDLOCK_*``).  Patched, the site's ``configure.zcml`` is loaded first, as a site loads it,
and stays in force: the package's own ``zope.testing`` clean-up hook, which undoes the patch between tests, is
taken out, since a site never runs it.  ``--in-transactions`` runs every test inside a transaction of a real
ZODB connection (an in-memory database of the harness's own), so that zlock holds the lock for the transaction
instead of for the call; nothing in their tests is edited.

Prints one JSON object as its last line: ``{"outcomes": {test id: "ok" | "failure" | "error" | "skip"},
"calls": patched calls, "held": of those, how many held the lock for a transaction}``.
"""

from __future__ import annotations

import json
import os
import sys
import unittest
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The suites: every test of ZCatalog and PluginIndexes, and CMFCore's catalog, indexing and folder tests.
SUITES = {
    # Two processes: with Plone installed, ZCatalog's suite imports every product (Products.CMFPlone among
    # them), whose import-time patches of the date indexes would fail a PluginIndexes test as published.
    "zcatalog": [("Products.ZCatalog", ())],
    "pluginindexes": [("Products.PluginIndexes", ())],
    "cmfcore": [("Products.CMFCore", ("test_CatalogTool", "test_CatalogIndexing", "test_CMFCatalogAware",
                                      "test_PortalFolder"))],
}


def patch_like_a_site() -> None:
    """Load configure.zcml and keep the patch through the suites' clean-ups."""
    from zope.configuration import xmlconfig
    from zope.testing import cleanup

    from unimr.memcachedlock.zope import patch

    xmlconfig.file(os.path.join(ROOT, "configure.zcml"))
    cleanup._cleanups[:] = [entry for entry in cleanup._cleanups if entry[0] is not patch.undo_all]
    assert patch.patches(), "configure.zcml patched nothing"


def count_locks() -> dict[str, int]:
    """Count the patched catalog calls, and those that held the lock for a transaction."""
    from unimr.memcachedlock.zodb import decorator

    counts = {"calls": 0, "held": 0}
    real = decorator.hold_for_transaction

    def counted(*args: Any, **kw: Any) -> bool:
        held = real(*args, **kw)
        counts["calls"] += 1
        counts["held"] += bool(held)
        return held

    decorator.hold_for_transaction = counted
    return counts


def run_in_transactions() -> None:
    """Every test runs inside a transaction of a connection to an in-memory ZODB, aborted afterwards."""
    import transaction
    import ZODB

    db = ZODB.DB(None)
    real_run = unittest.TestCase.run

    def run(self: unittest.TestCase, result: Any = None) -> Any:
        conn = db.open()
        transaction.begin()
        try:
            return real_run(self, result)
        finally:
            transaction.abort()
            conn.close()

    unittest.TestCase.run = run


def tests_of(suite: Any) -> list[Any]:
    if isinstance(suite, unittest.TestSuite):
        return [test for child in suite for test in tests_of(child)]
    return [suite]


def main(argv: list[str]) -> int:
    from zope.testrunner.runner import Runner

    group, mode, in_transactions = argv[0], argv[1], "--in-transactions" in argv
    counts = {"calls": 0, "held": 0}
    if mode == "patched":
        patch_like_a_site()
        counts = count_locks()
    if in_transactions:
        run_in_transactions()
    outcomes: dict[str, str] = {}
    for package, modules in SUITES[group]:
        site_packages = os.path.dirname(os.path.dirname(__import__(package, fromlist=["__path__"]).__path__[0]))
        args = ["conformance", "--test-path", site_packages, "-s", package, "-q"]
        for module in modules:
            args += ["-m", module]
        runner = Runner(args=args, script_parts=["conformance"], cwd=site_packages, warnings="ignore")
        runner.run()
        for layer_suite in runner.tests_by_layer_name.values():
            for test in tests_of(layer_suite):
                outcomes[test.id()] = "ok"
        for kind, found in (("failure", runner.failures), ("error", runner.errors)):
            for entry in found:
                outcomes[entry[0].id()] = kind
        for entry in runner.skipped:
            outcomes[entry[0].id()] = "skip"
        for error in runner.import_errors:
            outcomes["import:%s" % getattr(error, "module", error)] = "error"
    print(json.dumps({"outcomes": outcomes, **counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main(sys.argv[1:]))
