"""Configuration: MEMCACHEDLOCK_SERVERS and friends, read once, resettable."""

from __future__ import annotations

import pytest

from unimr.memcachedlock import ConfigurationError, config, registry
from unimr.memcachedlock.config import ServerAddress, Settings, parse_servers


def test_default_is_local_memcached_with_file_fallback():
    settings = Settings.from_environ({})
    assert [str(s) for s in settings.servers] == ["127.0.0.1:11211"]
    assert settings.backend == "fallback"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:11211", ["127.0.0.1:11211"]),
        ("host1:11211,host2:11212", ["host1:11211", "host2:11212"]),
        (" cache.example.org:1 , [::1]:11311 ", ["cache.example.org:1", "[::1]:11311"]),
        ("[::1]", ["[::1]:11211"]),
        ("localhost", ["localhost:11211"]),
        ("/run/memcached/memcached.sock", ["/run/memcached/memcached.sock"]),
        ("unix:/tmp/mc.sock,127.0.0.1:5", ["/tmp/mc.sock", "127.0.0.1:5"]),
    ],
)
def test_server_list_forms(text, expected):
    assert [str(s) for s in parse_servers(text)] == expected


def test_address_kinds():
    (tcp, v6, unix) = parse_servers("h:1,[fe80::1]:2,/s.sock")
    assert tcp.pymemcache_server == ("h", 1)
    assert v6.pymemcache_server == ("fe80::1", 2)
    assert unix.pymemcache_server == "/s.sock"


@pytest.mark.parametrize(
    "bad, named",
    [
        ("host:notaport", "host:notaport"),
        ("host:0", "host:0"),
        ("host:70000", "host:70000"),
        ("host:", "host:"),
        ("::1:11211", "::1:11211"),
        ("[::1:11211", "[::1:11211"),
        ("[nothex]:1", "[nothex]:1"),
        ("good:1,,other:2", "good:1,,other:2"),
        ("a b:1", "a b:1"),
        ("unix:relative.sock", "unix:relative.sock"),
        ("h:1,h:1", "h:1"),
        ("", "''"),
    ],
)
def test_malformed_entries_name_the_entry(bad, named):
    with pytest.raises(ConfigurationError) as info:
        parse_servers(bad)
    assert isinstance(info.value, ValueError)
    assert named in str(info.value)


def test_environment_is_read_once_and_reset_rereads(monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "a:1")
    first = config.get_settings()
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "b:2")
    assert config.get_settings() is first
    registry.reset()
    assert [str(s) for s in config.get_settings().servers] == ["b:2"]


def test_bad_environment_is_reported_when_read(monkeypatch):
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "cache:11211,cache2:port")
    with pytest.raises(ConfigurationError, match="cache2:port"):
        config.get_settings()
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "cache:11211")
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "redis")
    registry.reset()
    with pytest.raises(ConfigurationError, match="redis"):
        config.get_settings()
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "memcached")
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "-1")
    registry.reset()
    with pytest.raises(ConfigurationError, match="MEMCACHEDLOCK_IO_TIMEOUT"):
        config.get_settings()


def test_configure_in_code_and_backend_is_built_once(memcached):
    settings = registry.configure(servers=memcached.address, backend="memcached")
    assert settings.servers == (ServerAddress("127.0.0.1", memcached.port),)
    backend = registry.get_backend()
    assert registry.get_backend() is backend
    registry.configure(io_timeout=2.0)
    assert registry.get_backend() is not backend
    with pytest.raises(ConfigurationError, match="sqlite"):
        registry.configure(backend="sqlite")


@pytest.mark.parametrize("value, says", [
    ("127.0.0.1:11211;127.0.0.1:11212", "not ';'"),
    ("127.0.0.1:11211 127.0.0.1:11212", "whitespace"),
    ("memcached://127.0.0.1:11211", "without a URL scheme"),
    ("127.0.0.1:1\u00b2", "bad port '1\u00b2'"),
    ("host:1:2", "more than one ':'"),
    ("evil\x1b[2J:11211", "control characters"),
])
def test_common_server_list_mistakes_say_what_is_wrong(value, says):
    """The message names the value and the real mistake."""
    with pytest.raises(ConfigurationError) as info:
        parse_servers(value)
    message = str(info.value)
    assert says in message and "IPv6" not in message
    assert repr(value) in message or repr(value.split(";")[0]) in message


def test_a_server_address_given_without_its_port_is_refused_at_once():
    """A ServerAddress given in code names a socket path, or a host and a port (found by mypy).

    ``ServerAddress(host="h")`` used to pass the settings' check and fail only when the store was built,
    with a TypeError from formatting its missing port, naming neither the setting nor the value.
    """
    with pytest.raises(ConfigurationError, match="MEMCACHEDLOCK_SERVERS"):
        Settings(servers=(ServerAddress(host="h"),))
    with pytest.raises(ConfigurationError, match="MEMCACHEDLOCK_SERVERS"):
        registry.configure(servers=[ServerAddress(port=11211)])
    with pytest.raises(ConfigurationError, match="neither a socket path nor a host and a port"):
        str(ServerAddress(host="h"))
    assert Settings(servers=(ServerAddress("h", 1), ServerAddress(path="/s.sock"))).servers[1].complete


def test_txn_wait_and_metrics_are_settings_read_once_and_reset_rereads(monkeypatch, tmp_path):
    """``MEMCACHEDLOCK_TXN_WAIT`` and ``_METRICS_DIR``/``_INTERVAL`` are settings like the store's."""
    assert (Settings().txn_wait, Settings().metrics_dir, Settings().metrics_interval) == (5.0, "", 60.0)
    monkeypatch.setenv("MEMCACHEDLOCK_TXN_WAIT", "0.3")
    monkeypatch.setenv("MEMCACHEDLOCK_METRICS_DIR", str(tmp_path))
    monkeypatch.setenv("MEMCACHEDLOCK_METRICS_INTERVAL", "0.2")
    first = config.get_settings()
    assert (first.txn_wait, first.metrics_dir, first.metrics_interval) == (0.3, str(tmp_path), 0.2)
    monkeypatch.setenv("MEMCACHEDLOCK_TXN_WAIT", "2")
    assert config.get_settings() is first
    registry.reset()
    assert config.get_settings().txn_wait == 2.0
    settings = registry.configure(txn_wait=7, metrics_interval="90", metrics_dir=" ")
    assert (settings.txn_wait, settings.metrics_dir, settings.metrics_interval) == (7.0, str(tmp_path), 90.0)
    with pytest.raises(ConfigurationError, match="MEMCACHEDLOCK_METRICS_DIR='relative'"):
        registry.configure(metrics_dir="relative")


def _outcome(read):
    """What ``read()`` returns, or the words of its ConfigurationError."""
    try:
        return read()
    except ConfigurationError as exc:
        return str(exc)


@pytest.mark.parametrize("variable, value", [
    (variable, value) for variable in ("MEMCACHEDLOCK_TXN_WAIT", "MEMCACHEDLOCK_METRICS_INTERVAL")
    for value in ("soon", "0", "-1", "nan", "3601", "0.05", "86401", " 2 ", "")
] + [("MEMCACHEDLOCK_METRICS_DIR", value) for value in ("relative", "/m\0x", " /srv/m ", "")])
def test_the_settings_and_the_own_readers_agree(monkeypatch, variable, value):
    """Until the readers ask ``get_settings()``: the same value, default, or words for a bad value."""
    from unimr.memcachedlock import metrics
    from unimr.memcachedlock.transactionlock import txn_wait

    name = {"MEMCACHEDLOCK_TXN_WAIT": "txn_wait", "MEMCACHEDLOCK_METRICS_DIR": "metrics_dir",
            "MEMCACHEDLOCK_METRICS_INTERVAL": "metrics_interval"}[variable]
    if name == "txn_wait":
        monkeypatch.setenv(variable, value)
        own = _outcome(txn_wait)
    else:
        own = _outcome(lambda: metrics.metrics_settings({variable: value})[name != "metrics_dir"])
    assert _outcome(lambda: getattr(Settings.from_environ({variable: value}), name)) == own
