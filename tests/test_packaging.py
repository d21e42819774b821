"""The release artifacts: ``python -m build`` makes an sdist and a wheel that install and work.

Builds exactly as a release does (the wheel is built from the sdist, so a file
the sdist lacks breaks the wheel), checks the metadata with ``twine check``,
then installs each artifact into a fresh virtualenv and imports the package
there, with its ZCML files.  About 30 s, most of it pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from servers import unmeasured

ROOT = Path(__file__).resolve().parent.parent
ZCML = ("configure.zcml", "meta.zcml", "catalog.zcml")

CHECK = """
import importlib.metadata, os, sys
import unimr.memcachedlock as package
from unimr.memcachedlock import Lock, lock, rlock
here = os.path.dirname(package.__file__)
assert here.startswith(sys.prefix), here
missing = [name for name in sys.argv[1:] if not os.path.isfile(os.path.join(here, name))]
assert not missing, missing
meta = importlib.metadata.metadata("unimr.memcachedlock")
assert meta["License-Expression"] == "ZPL-2.1", meta["License-Expression"]
print("ok")
"""


def run(*argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = run(sys.executable, "-m", "build", "-o", out, ROOT, env=unmeasured(os.environ))
    assert "License classifiers are deprecated" not in proc.stdout + proc.stderr
    return out


@pytest.mark.slow
def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist):
    sdist, = dist.glob("*.tar.gz")
    wheel, = dist.glob("*.whl")
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("CHANGES.rst", "README.rst", "LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in",
                   "tests/conftest.py", "tests/servers.py", "tests/overlap.py", "tests/zeoserver.py",
                   "run-tests", "scripts/bootstrap.sh"):
        assert needed in names, needed
    for zcml in ZCML:
        assert "src/unimr/memcachedlock/" + zcml in names
    with zipfile.ZipFile(wheel) as whl:
        wheel_names = set(whl.namelist())
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names)
    assert not any("/tests/" in name or name.startswith("tests/") for name in wheel_names)


@pytest.mark.slow
@pytest.mark.parametrize("artifact", ["*.tar.gz", "*.whl"])
def test_each_artifact_installs_into_a_fresh_venv_with_its_zcml(dist, tmp_path, artifact):
    path, = dist.glob(artifact)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    env = {k: v for k, v in unmeasured(os.environ).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", path, env=env)
    assert run(python, "-c", CHECK, *ZCML, env=env, cwd=tmp_path).stdout.strip() == "ok"
    help_text = run(venv / "bin" / "memcachedlock", "--help", env=env, cwd=tmp_path).stdout
    assert help_text.startswith("usage: memcachedlock")
