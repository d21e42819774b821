"""Real servers for the tests: memcached on a free loopback port (the package's shared starter).

Nothing here is mocked: see :mod:`unimr.memcachedlock.tools.servers`.
"""

import os
import subprocess
from collections.abc import Mapping

from unimr.memcachedlock.tools.servers import MemcachedServer, free_port, wait_for_port

#: What coverage's subprocess support (pyproject.toml, ``[tool.coverage.run] patch``) puts in the
#: environment to measure the processes the tests start.
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def unmeasured(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without coverage's variables, for processes that run other projects' code: ZEO servers,
    the ZCatalog and CMFCore suites, Plone instances, package builds.  Measured, they cost minutes of the
    run, and the package's code they run (the catalog patch, the publisher's parts) is measured in other
    tests."""
    return {name: value for name, value in env.items() if name not in COVERAGE_VARIABLES}


#: Where :func:`measured_after_start` keeps coverage's configuration until the process calls
#: :func:`measure_from_here`.
DEFERRED_COVERAGE = "UNIMR_TESTS_COVERAGE_CONFIG"


def measured_after_start(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a process that is measured only from its call of :func:`measure_from_here` on: a Zope
    instance, whose start-up (Zope's imports and ZCML, seconds more under coverage) runs no code of the
    package that the in-process tests do not measure, while its requests do."""
    found = unmeasured(env)
    if "COVERAGE_PROCESS_CONFIG" in env:
        found[DEFERRED_COVERAGE] = env["COVERAGE_PROCESS_CONFIG"]
    return found


def measure_from_here() -> None:
    """Start coverage in this process now, if the run measures the processes it starts."""
    config = os.environ.pop(DEFERRED_COVERAGE, None)
    if config is not None:
        os.environ["COVERAGE_PROCESS_CONFIG"] = config
        import coverage

        coverage.process_startup()


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """End a server process: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["MemcachedServer", "free_port", "measure_from_here", "measured_after_start", "stop_process", "unmeasured",
           "wait_for_port"]
