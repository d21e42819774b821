"""Packaging for unimr.memcachedlock."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent

ZOPE = [
    "transaction>=5.0",
    "ZODB>=6.0",
    "ZEO>=6.0",
    "Zope>=5.0",
    "Products.ZCatalog>=7.0",
    "zope.configuration",
]

# A real Plone 6 site (tests/plonesite.py, tests/test_plone.py, benchmarks/plone_contention.py).
# plone.app.layout<7: without it pip picks the alpha plone.app.layout 7.0.0a6, whose ZCML fails to load
# with Plone 6.2.2.
PLONE = [
    "Plone==6.2.2",
    "plone.app.layout<7",
    "plone.restapi",
    "requests",
]

setup(
    name="unimr.memcachedlock",
    version="1.0.0.dev0",
    description=(
        "Distributed locks in memcached (or flock) that serialise ZODB writers "
        "before they do expensive work"
    ),
    long_description=(HERE / "README.rst").read_text(encoding="utf-8")
    + "\n\n"
    + (HERE / "CHANGES.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    author="unimr.memcachedlock developers",
    license_expression="ZPL-2.1",
    license_files=["LICENSE"],
    classifiers=[
        "Framework :: Zope",
        "Framework :: ZODB",
        "Programming Language :: Python :: 3",
    ],
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_namespace_packages(where="src", include=["unimr.*"]),
    include_package_data=True,
    package_data={"unimr.memcachedlock": ["*.zcml"]},
    zip_safe=False,
    install_requires=[
        "pymemcache>=4.0",
        "zope.interface>=5.0",
        "zope.component>=5.0",
    ],
    extras_require={
        "zope": ZOPE,
        "plone": ZOPE + PLONE,
        "test": ZOPE
        + PLONE
        + ["pytest>=7.0", "pytest-timeout", "zope.testbrowser", "WebTest", "Products.SiteErrorLog",
           "plone.autoinclude", "build", "twine", "sphinx",
           "RelStorage[sqlite3]",
           # tests/tlscerts.py makes the certificates of tests/test_tls.py and benchmarks/tls.py
           "cryptography",
           # ./run-tests' checks (docs/developing.rst): pinned, so a new release's rules do not fail a clean run
           "ruff==0.17.6", "mypy==2.4.1", "coverage==7.18.0",
           # tests/test_conformance.py runs these packages' own suites: the versions it is checked against
           "Products.ZCatalog==7.4", "Products.CMFCore==3.9", "zope.testrunner==8.3"],
    },
    entry_points={
        "console_scripts": [
            "memcachedlock = unimr.memcachedlock.tools.cli:main",
        ],
        # plone.autoinclude (and z3c.autoinclude) load the package's configure.zcml,
        # which patches nothing; the catalog patch stays opt-in (catalog.zcml).
        "z3c.autoinclude.plugin": [
            "target = plone",
        ],
    },
)
