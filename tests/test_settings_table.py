"""Every setting, given empty, blank or bad, through every way it comes in: one table.

The rule (``config.py``, ``docs/usage.rst``): surrounding whitespace is
ignored, and a value that is then empty is the same as a value not given --
an environment variable not set (the default), a ``configure()`` keyword not
passed, a ZCML attribute left out.  Any other bad value is a
ConfigurationError whose message names the variable and the value.

Each row goes through the environment (``Settings.from_environ``, or the
reader of a setting that lives elsewhere: ``txn_wait()``, ``metrics_settings()``),
through code (``configure()``; ``configure_metrics()`` for the metrics) and,
for the store's settings, through ``<memcachedlock:store>`` loaded by
zope.configuration.  The transaction wait and the metrics settings are
``Settings`` fields too: their rows also go through ``Settings.from_environ``
and ``configure()``.  Nothing is mocked.
"""

from __future__ import annotations

import io
import json

import pytest
from zope.configuration.exceptions import ConfigurationError as ZCMLError

from unimr.memcachedlock import ConfigurationError, config, metrics, registry
from unimr.memcachedlock.tools import cli
from unimr.memcachedlock.zodb.taking import DEFAULT_TXN_WAIT, txn_wait

from introspection import store_directive_settings

#: Variable -> (where it lands, its default).  ``Settings`` fields are read from ``Settings``;
#: the others from their own readers.
SETTINGS = {
    "MEMCACHEDLOCK_SERVERS": ("servers", "127.0.0.1:11211"),
    "MEMCACHEDLOCK_BACKEND": ("backend", "fallback"),
    "MEMCACHEDLOCK_DIR": ("lock_dir", config.default_lock_dir()),
    "MEMCACHEDLOCK_CONNECT_TIMEOUT": ("connect_timeout", 0.5),
    "MEMCACHEDLOCK_IO_TIMEOUT": ("io_timeout", 1.0),
    "MEMCACHEDLOCK_RETRY": ("retry", 2.0),
    "MEMCACHEDLOCK_PREFIX": ("prefix", "memcachedlock:"),
    "MEMCACHEDLOCK_TXN_WAIT": ("txn_wait", DEFAULT_TXN_WAIT),
    "MEMCACHEDLOCK_METRICS_DIR": ("metrics_dir", ""),
    "MEMCACHEDLOCK_METRICS_INTERVAL": ("metrics_interval", metrics.DEFAULT_INTERVAL),
    "MEMCACHEDLOCK_TLS_CA": ("tls_ca", ""),
    "MEMCACHEDLOCK_TLS_CERT": ("tls_cert", ""),
    "MEMCACHEDLOCK_TLS_KEY": ("tls_key", ""),
}
#: Settings fields that also have a reader of their own (``txn_wait()``, ``metrics_settings()``).
OWN_READERS = ("txn_wait", "metrics_dir", "metrics_interval")
#: Settings fields -> the ``<memcachedlock:store>`` attribute that sets them.
ZCML_ATTRIBUTES = {"servers": "servers", "backend": "backend", "lock_dir": "dir", "connect_timeout": "connect_timeout",
                   "io_timeout": "io_timeout", "retry": "retry", "prefix": "prefix", "tls_ca": "tls_ca",
                   "tls_cert": "tls_cert", "tls_key": "tls_key"}

DEFAULT = object()
BAD = object()

EMPTY_AND_BLANK = ["", " ", "\t", " \n "]

#: (variable, value, expected): DEFAULT, BAD (a ConfigurationError naming both), or the value in force.
ROWS = [(variable, blank, DEFAULT) for variable in SETTINGS for blank in EMPTY_AND_BLANK] + [
    ("MEMCACHEDLOCK_SERVERS", "host:0", BAD),
    ("MEMCACHEDLOCK_SERVERS", "a:1,,b:2", BAD),
    ("MEMCACHEDLOCK_SERVERS", "a:1;b:2", BAD),
    ("MEMCACHEDLOCK_SERVERS", ",", BAD),
    ("MEMCACHEDLOCK_SERVERS", "a:1,a:1", BAD),
    ("MEMCACHEDLOCK_SERVERS", "a:1\0", BAD),
    ("MEMCACHEDLOCK_SERVERS", " cache:1 ", "cache:1"),
    ("MEMCACHEDLOCK_BACKEND", "redis", BAD),
    ("MEMCACHEDLOCK_BACKEND", "file,memcached", BAD),
    ("MEMCACHEDLOCK_BACKEND", "file\0", BAD),
    ("MEMCACHEDLOCK_BACKEND", " FILE ", "file"),
    ("MEMCACHEDLOCK_DIR", "locks", BAD),
    ("MEMCACHEDLOCK_DIR", "./locks", BAD),
    ("MEMCACHEDLOCK_DIR", " locks ", BAD),
    ("MEMCACHEDLOCK_DIR", ".", BAD),
    ("MEMCACHEDLOCK_DIR", "~/locks", BAD),
    ("MEMCACHEDLOCK_DIR", "/tmp/a\0b", BAD),
    ("MEMCACHEDLOCK_DIR", "\0", BAD),
    ("MEMCACHEDLOCK_DIR", " /srv/locks ", "/srv/locks"),
    ("MEMCACHEDLOCK_PREFIX", "two words", BAD),
    ("MEMCACHEDLOCK_PREFIX", "x" * 41, BAD),
    ("MEMCACHEDLOCK_PREFIX", "caf\u00e9:", BAD),
    ("MEMCACHEDLOCK_PREFIX", "site\0", BAD),
    ("MEMCACHEDLOCK_PREFIX", " site: ", "site:"),
    ("MEMCACHEDLOCK_METRICS_DIR", "relative/dir", BAD),
    ("MEMCACHEDLOCK_METRICS_DIR", ".", BAD),
    ("MEMCACHEDLOCK_METRICS_DIR", "/tmp/m\0x", BAD),
    ("MEMCACHEDLOCK_METRICS_DIR", " /srv/metrics ", "/srv/metrics"),
]
# The TLS files: relative, missing, a directory (the tests run as root, for whom chmod 000 hides nothing: a
# directory is the file that cannot be read), a device that holds no PEM, a NUL byte.  A certificate or key
# alone is refused for its file first; good files, and those given together, are in tests/test_tls.py.
for _variable in ("MEMCACHEDLOCK_TLS_CA", "MEMCACHEDLOCK_TLS_CERT", "MEMCACHEDLOCK_TLS_KEY"):
    ROWS += [(_variable, bad, BAD) for bad in ("ca.pem", "./tls/ca.pem", "/nonexistent/ca.pem", "/", "/dev/null",
                                               "/tmp/a\0b")]
for _variable, _high in (("MEMCACHEDLOCK_CONNECT_TIMEOUT", "61"), ("MEMCACHEDLOCK_IO_TIMEOUT", "61"),
                         ("MEMCACHEDLOCK_RETRY", "3601"), ("MEMCACHEDLOCK_TXN_WAIT", "3601"),
                         ("MEMCACHEDLOCK_METRICS_INTERVAL", "86401")):
    ROWS += [(_variable, bad, BAD) for bad in ("soon", "1s", "-1", "0", "nan", "inf", _high, "1\0")]
    ROWS.append((_variable, " 0.25 ", 0.25))


def row_id(row) -> str:
    variable, value, expected = row
    outcome = "default" if expected is DEFAULT else "error" if expected is BAD else "ok"
    return "%s=%r-%s" % (variable[len("MEMCACHEDLOCK_"):], value, outcome)


def plain(value):
    """A setting's value as the table writes it (server lists as ``host:port,...``)."""
    if isinstance(value, tuple):
        return ",".join(str(server) for server in value)
    return value


def from_environment(variable: str, value: str, monkeypatch):
    """The value in force when only ``variable`` is set in the environment."""
    name = SETTINGS[variable][0]
    if name == "txn_wait":
        monkeypatch.setenv(variable, value)
        return txn_wait()
    if name.startswith("metrics_"):
        directory, interval = metrics.metrics_settings({variable: value})
        return directory if name == "metrics_dir" else interval
    return plain(getattr(config.Settings.from_environ({variable: value}), name))


def from_code(variable: str, value: str):
    """The value in force after ``configure()`` (or ``configure_metrics()``) was given ``value``."""
    name = SETTINGS[variable][0]
    if name.startswith("metrics_"):
        try:
            metrics.configure_metrics(**{"directory" if name == "metrics_dir" else "interval": value})
            directory, interval = metrics._current_settings()
        finally:
            metrics.reset()
        return directory if name == "metrics_dir" else interval
    return plain(getattr(registry.configure(**{name: value}), name))


def from_zcml(variable: str, value: str):
    """The value in force after ``<memcachedlock:store attribute="value"/>``."""
    name = SETTINGS[variable][0]
    return plain(getattr(store_directive_settings({ZCML_ATTRIBUTES[name]: value}), name))


def from_settings(variable: str, value: str):
    """The value of the ``Settings`` field when only ``variable`` is set in the environment."""
    return plain(getattr(config.Settings.from_environ({variable: value}), SETTINGS[variable][0]))


def from_configure(variable: str, value: str):
    """The value of the ``Settings`` field after ``configure()`` was given ``value``."""
    name = SETTINGS[variable][0]
    return plain(getattr(registry.configure(**{name: value}), name))


ROUTES = {"environment": from_environment, "configure": from_code, "zcml": from_zcml,
          "settings": from_settings, "settings-configure": from_configure}


def takes(route: str, variable: str, value: str) -> bool:
    """Whether ``value`` of ``variable`` can come in by ``route`` at all."""
    name = SETTINGS[variable][0]
    if route in ("settings", "settings-configure"):
        return name in OWN_READERS  # the other fields go through Settings on the routes above
    if route == "configure":
        return name != "txn_wait"  # txn_wait() reads the environment only; "settings-configure" has configure()
    if route == "zcml":
        return name in ZCML_ATTRIBUTES and "\0" not in value  # XML cannot hold a NUL
    return not (name == "txn_wait" and "\0" in value)  # nor can a real environment variable


CASES = [(row, route) for row in ROWS for route in sorted(ROUTES) if takes(route, row[0], row[1])]


@pytest.mark.parametrize("row, route", CASES, ids=["%s-%s" % (row_id(row), route) for row, route in CASES])
def test_every_setting_through_every_route(row, route, monkeypatch):
    variable, value, expected = row
    read = ROUTES[route]
    args = (variable, value, monkeypatch) if route == "environment" else (variable, value)
    if expected is BAD:
        with pytest.raises((ConfigurationError, ZCMLError)) as info:
            read(*args)
        message = str(info.value)
        assert variable in message and repr(value) in message, message
        if route == "zcml":
            assert isinstance(info.value.__cause__, ConfigurationError), repr(info.value)
    else:
        wanted = SETTINGS[variable][1] if expected is DEFAULT else expected
        assert read(*args) == wanted


def test_an_empty_keyword_to_configure_is_a_keyword_not_passed(monkeypatch, tmp_path):
    """``configure(x="")`` keeps what is in force, as an empty environment variable gives what an unset one does."""
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(tmp_path))
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "")
    registry.reset()
    assert registry.configure(lock_dir=" ", io_timeout="").lock_dir == str(tmp_path)
    assert config.get_settings().io_timeout == 1.0
    registry.configure(io_timeout=3, prefix="site:")
    settings = registry.configure(io_timeout="", prefix="\t", servers=" ", backend="")
    assert (settings.io_timeout, settings.prefix, settings.backend) == (3.0, "site:", "fallback")


def test_an_empty_store_attribute_is_an_attribute_left_out(monkeypatch, tmp_path):
    """``dir=""`` used to become the directory of the ZCML's package (or the working directory)."""
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(tmp_path))
    monkeypatch.setenv("MEMCACHEDLOCK_RETRY", "7")
    assert from_zcml("MEMCACHEDLOCK_DIR", "") == str(tmp_path)
    assert from_zcml("MEMCACHEDLOCK_RETRY", " ") == 7.0


@pytest.mark.parametrize("given, expected", [
    (["--dir", "locks"], "MEMCACHEDLOCK_DIR='locks'"),
    (["--dir", "/tmp/a\0b"], "MEMCACHEDLOCK_DIR='/tmp/a\\x00b'"),
    (["--dir", ""], None),
    (["--dir", "  "], None),
    (["--backend", " "], None),
    (["--servers", ""], None),
])
def test_command_line_overrides_follow_the_rule(given, expected, tmp_path, monkeypatch, capsys):
    """``memcachedlock check``: a bad ``--dir`` is a usage error naming it; an empty option is not given."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "file")
    monkeypatch.setenv("MEMCACHEDLOCK_DIR", str(tmp_path / "locks"))
    out = io.StringIO()
    code = cli.main(["check", "--json"] + given, out=out)
    result = json.loads(out.getvalue())
    if expected is None:
        assert code == 0, result
        assert result["configuration"]["lock_dir"] == str(tmp_path / "locks")
        assert result["configuration"]["backend"] == "file"
    else:
        assert code == 2
        assert any(expected in problem for problem in result["problems"]), result
