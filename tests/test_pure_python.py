"""The view-move tests again, on persistent's and BTrees' Python implementations (``PURE_PYTHON=1``).

The move reads the pickle cache's order, which the C and the Python
implementations keep differently (the C one through a pointer in each
object, the Python one through its jar's ``_cache``).  Both must give the
same answers, so the same tests run in a child pytest with the Python
implementation forced.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["test_view_move.py", "test_view_move_safety.py", "test_zodb_private.py"]


def pure_env() -> dict:
    env = dict(os.environ, PURE_PYTHON="1")
    for name in list(env):
        if name.startswith("MEMCACHEDLOCK_"):
            del env[name]
    return env


def test_the_child_runs_the_python_implementations():
    """Without this, the run below could pass on the C implementations and prove nothing."""
    code = ("import persistent, BTrees.OOBTree; "
            "print(persistent.Persistent.__module__, BTrees.OOBTree.OOBTree.__mro__[1].__module__, "
            "persistent.PickleCache.__module__)")
    out = subprocess.run([sys.executable, "-c", code], env=pure_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["persistent.persistence", "BTrees._base", "persistent.picklecache"]


@pytest.mark.slow
def test_the_view_move_tests_pass_on_the_python_implementations():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES],
        cwd=HERE, env=pure_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
