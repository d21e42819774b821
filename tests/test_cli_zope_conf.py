"""``memcachedlock --zope-conf``: the command reads a Zope instance's settings, not only the shell's.

An instance directory as ``mkwsgiinstance`` makes it (``etc/zope.conf`` with
``%define INSTANCE``, ``etc/site.zcml`` including a ``package-includes``
slug) is written for each test; the locks are held by real processes in a
real memcached, started with the instance's settings.
"""

from __future__ import annotations

import io
import os
import textwrap

import pytest
from test_cli import Holder

from unimr.memcachedlock import metrics
from unimr.memcachedlock.tools import cli

from servers import free_port

SITE_ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope">
  <include package="Zope2.App" />
  <include files="package-includes/*-configure.zcml" />
</configure>
"""

SLUG = """\
<configure xmlns="http://namespaces.zope.org/zope"
           xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">
  <include package="unimr.memcachedlock" />
  %s
</configure>
"""


def make_instance(path, environment: dict[str, str], store: str = "") -> str:
    """An instance directory at ``path``; its zope.conf's path."""
    etc = path / "etc"
    (etc / "package-includes").mkdir(parents=True)
    lines = "\n".join("  %s %s" % item for item in environment.items())
    (etc / "zope.conf").write_text(textwrap.dedent("""\
        %%define INSTANCE %s
        instancehome $INSTANCE
        <environment>
        %s
        </environment>
        <zodb_db main>
          <filestorage>
            path $INSTANCE/var/Data.fs
          </filestorage>
          mount-point /
        </zodb_db>
        """) % (path, lines))
    (etc / "site.zcml").write_text(SITE_ZCML)
    if store:
        (etc / "package-includes" / "001-locks-configure.zcml").write_text(SLUG % store)
    return str(etc / "zope.conf")


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def site_lock(memcached, monkeypatch):
    """A lock held by another process with the site's prefix; the shell then looks at a dead server."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
    monkeypatch.setenv("MEMCACHEDLOCK_PREFIX", "site1:")
    held = Holder("catalog:/plone/portal_catalog")
    monkeypatch.setenv("MEMCACHEDLOCK_PREFIX", "memcachedlock:")
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "127.0.0.1:%d" % free_port())
    yield held
    held.close()


def test_list_reads_the_instances_environment_and_says_where_it_looked(site_lock, memcached, tmp_path):
    conf = make_instance(tmp_path, {"MEMCACHEDLOCK_SERVERS": memcached.address, "MEMCACHEDLOCK_PREFIX": "site1:"})
    code, text = run("list", "--zope-conf", conf)
    assert code == 0
    assert "catalog:/plone/portal_catalog" in text and "pid %d" % site_lock.proc.pid in text, text
    assert cli.main(["list", "--backend", "memcached"], out=io.StringIO()) == 3  # the shell's dead server


def test_the_store_directive_of_the_site_zcml_wins_over_the_environment(site_lock, memcached, tmp_path):
    conf = make_instance(tmp_path, {"MEMCACHEDLOCK_SERVERS": memcached.address, "MEMCACHEDLOCK_PREFIX": "other:"},
                         store='<memcachedlock:store prefix="site1:" backend="memcached" />')
    code, text = run("list", "--zope-conf", conf)
    assert code == 0 and "catalog:/plone/portal_catalog" in text, text
    code, text = run("check", "--zope-conf", conf)
    assert "settings from %s <environment>, <memcachedlock:store> in %s" % (
        conf, tmp_path / "etc" / "package-includes" / "001-locks-configure.zcml") in text, text
    assert "prefix site1:" in text


def test_an_empty_listing_names_the_store_it_read(memcached, tmp_path, monkeypatch):
    conf = make_instance(tmp_path, {"MEMCACHEDLOCK_SERVERS": memcached.address},
                         store='<memcachedlock:store prefix="empty:" backend="memcached" />')
    assert run("list", "--zope-conf", conf) == (
        0, "no locks held in memcached %s (prefix empty:)\n" % memcached.address)


def test_command_line_options_win_over_the_instance(site_lock, memcached, tmp_path):
    dead = "127.0.0.1:%d" % free_port()
    conf = make_instance(tmp_path, {"MEMCACHEDLOCK_SERVERS": dead},
                         store='<memcachedlock:store prefix="site1:" servers="%s" backend="memcached" />' % dead)
    assert cli.main(["list", "--zope-conf", conf], out=io.StringIO()) == 3
    code, text = run("list", "--zope-conf", conf, "--servers", memcached.address)
    assert code == 0 and "catalog:/plone/portal_catalog" in text, text


def test_stats_reads_the_metrics_directory_of_the_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMCACHEDLOCK_METRICS_DIR", raising=False)
    directory = tmp_path / "var" / "metrics"
    metrics.reset()
    metrics.record_conflict("Products.CMFUid.UniqueIdGeneratorTool.UniqueIdGeneratorTool", "POST /plone/f",
                            retried=True)
    metrics.write_snapshot(str(directory))
    metrics.reset()
    conf = make_instance(tmp_path, {"MEMCACHEDLOCK_METRICS_DIR": "$INSTANCE/var/metrics"})
    code, text = run("stats", "--zope-conf", conf)
    assert code == 0 and "UniqueIdGeneratorTool" in text and "POST /plone/f" in text, text


@pytest.mark.parametrize("store, environment, named", [
    ('<memcachedlock:store prefix="has space" />', {}, "001-locks-configure.zcml"),
    ('<memcachedlock:store colour="red" />', {}, "unknown attribute colour"),
    ("", {"MEMCACHEDLOCK_SERVERS": "$NOWHERE:11211"}, "$NOWHERE is not defined"),
    ("", {"MEMCACHEDLOCK_SERVERS": "10.0.0.5:11211;10.0.0.6:11211"}, "separate servers with commas"),
])
def test_bad_instance_settings_are_named(tmp_path, capsys, store, environment, named):
    conf = make_instance(tmp_path, environment, store=store)
    assert cli.main(["list", "--zope-conf", conf], out=io.StringIO()) == 2
    assert named in capsys.readouterr().err


def test_a_missing_zope_conf_is_named(tmp_path, capsys):
    missing = str(tmp_path / "etc" / "zope.conf")
    assert cli.main(["list", "--zope-conf", missing], out=io.StringIO()) == 2
    assert "cannot read --zope-conf %r" % missing in capsys.readouterr().err


def test_the_walk_follows_package_includes_without_importing_them(tmp_path):
    """A store directive in a package's ZCML is found; the packages on the way are not imported."""
    import sys

    from unimr.memcachedlock.tools import zopeconf

    package = tmp_path / "lib" / "my_policy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "configure.zcml").write_text(SLUG % '<memcachedlock:store prefix="policy:" />')
    conf = make_instance(tmp_path, {}, store='<include package="my_policy" />')
    sys.path.insert(0, str(tmp_path / "lib"))
    try:
        found = zopeconf.read_zope_conf(conf)
    finally:
        sys.path.remove(str(tmp_path / "lib"))
    assert found.store == {"prefix": "policy:"} and found.store_file == str(package / "configure.zcml")
    assert "my_policy" not in sys.modules
    here = os.path.dirname(os.path.dirname(zopeconf.__file__))
    assert zopeconf.package_directory("unimr.memcachedlock.zope") == os.path.join(here, "zope")
    assert zopeconf.package_directory("no.such.package") is None
