"""TLS with client certificates to a real memcached started with ``-Z`` (``ssl_verify_mode=2``).

The certificates are made for the module by ``tlscerts.py``: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate from the CA
and one from another CA.  Locks, zlock on a real ZEO server and the command
work over TLS; a client without a certificate, or with a stranger's, is
refused with an error that names the server and says TLS; a plain client
against a TLS server and a TLS client against a plain one fail fast; the
fallback store takes the lock directory when the handshake fails; every
TLS setting is checked at start, through every way it comes in.

The tests run as root, for whom ``chmod 000`` does not make a file
unreadable: an unreadable file is given as a directory, and as a file that
holds no PEM.  Client processes are this file run as a script.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import ssl
import sys
import threading
import time

import pytest

from unimr.memcachedlock import BackendUnavailable, ConfigurationError, Lock, RLock, config, lock, registry, rlock
from unimr.memcachedlock.backends.memcachedserver import server_command
from unimr.memcachedlock.config import parse_server

from introspection import store_directive_settings

HERE = os.path.dirname(os.path.abspath(__file__))
#: Seconds a refused or mismatched connection may take at most: the connect and I/O timeouts, twice, and slack.
BOUND = 6.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tlscerts import make_certificates

    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certs):
    """One memcached that speaks only TLS and requires a client certificate from the CA."""
    from tlscerts import tls_memcached

    with tls_memcached(certs) as server:
        yield server


def _use(monkeypatch, server, backend: str = "memcached", **environ: str) -> None:
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", server.address)
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", backend)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    registry.reset()


@pytest.fixture
def over_tls(tls_server, certs, monkeypatch):
    """The TLS memcached, flushed, as the only lock store of a client with a certificate."""
    _use(monkeypatch, tls_server, **certs.environ())
    server_command(parse_server(tls_server.address), b"flush_all", tls_context=config.get_settings().tls_context)
    yield tls_server
    registry.reset()


def _refused(timeout: float = 1.0) -> BackendUnavailable:
    """The BackendUnavailable an acquisition meets, checked to come within BOUND seconds."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        Lock("tls:refused").acquire(timeout=timeout)
    assert time.monotonic() - started < BOUND
    return info.value


# --------------------------------------------------------------------------- locks over TLS


def test_locks_and_decorators_work_over_tls(over_tls):
    store = registry.get_backend()
    with Lock("tls:plain") as held:
        assert held.locked()
        assert store.holder(held.name) is not None
        assert not Lock("tls:plain").acquire(blocking=False)
    assert store.holder(held.name) is None
    again = RLock("tls:again")
    with again, again:
        assert again.locked()

    @lock(get_key=lambda fun, x: x)
    def double(x: int) -> int:
        return 2 * x

    @rlock(get_key=lambda fun, x: x)
    def nested(x: int) -> int:
        return x if x == 0 else nested(0) + x

    assert (double(21), nested(5)) == (42, 5)
    idle = store.servers[0].client._idle
    assert idle and all(isinstance(client.sock, ssl.SSLSocket) for client in idle)


def test_threads_take_turns_over_tls(over_tls):
    """4 threads x 15 read-pause-write increments under one lock: none lost, never two inside."""
    counter = {"value": 0, "inside": 0, "overlaps": 0}

    def work() -> None:
        for _ in range(15):
            with Lock("tls:counter", timeout=10):
                counter["inside"] += 1
                counter["overlaps"] += counter["inside"] > 1
                value = counter["value"]
                time.sleep(0.001)
                counter["value"] = value + 1
                counter["inside"] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (counter["value"], counter["overlaps"]) == (60, 0)


def test_processes_take_turns_over_tls(over_tls, tmp_path):
    """3 processes x 10 increments of one file under one lock, each over TLS with its certificate: none lost."""
    from clients import run_clients
    from servers import unmeasured

    path = tmp_path / "counter"
    path.write_text("0")
    reports = run_clients([[os.path.abspath(__file__), "counter", str(path), "10"] for _ in range(3)],
                          unmeasured(os.environ), timeout=120)
    assert int(path.read_text()) == 30
    assert all(report["tls"] for report in reports), reports


def _counter_client(path: str, times: int) -> None:
    tls = config.get_settings().tls_context is not None
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(times):
        with Lock("tls:file-counter", timeout=10):
            with open(path) as handle:
                value = int(handle.read())
            time.sleep(0.002)
            with open(path, "w") as handle:
                handle.write(str(value + 1))
    print(json.dumps({"tls": tls}), flush=True)


def test_zlock_on_zeo_over_tls(over_tls, zeo_server, tmp_path):
    """zlock's writers on a real ZEO server, their locks and notes over TLS: each commit once, none lost."""
    import test_zlock_zeo as zeo_clients

    from overlap import OverlapLog

    zeo_clients.setup_counter(zeo_server)
    reports = zeo_clients.run_clients(over_tls.address, zeo_server, tmp_path, "writer", 2, "6", "5")
    executions = sum(r["executions"] for r in reports)
    commits = sum(r["commits"] for r in reports)
    assert executions == commits == 12, reports
    assert zeo_clients.read_counter(zeo_server) == 12
    assert all(r["failed_commits"] == 0 for r in reports)
    assert OverlapLog(tmp_path / "overlap.log").violations() == []


def _run(*argv: str) -> tuple[int, str]:
    from unimr.memcachedlock.tools import cli

    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def test_the_command_looks_over_tls_and_says_so(over_tls):
    address = over_tls.address
    assert _run("list") == (0, "no locks held in memcached %s (TLS) (prefix memcachedlock:)\n" % address)
    with Lock("tls:shown"):
        code, text = _run("list")
        assert code == 0 and "tls:shown" in text, text
        code, text = _run("show", "tls:shown")
        assert code == 0 and "tls:shown" in text, text
    code, text = _run("check")
    assert code == 0, text
    assert "servers %s (TLS)" % address in text
    assert "memcached %s (TLS): reachable, version 1." % address in text


def test_bench_refuses_a_server_while_tls_is_on(over_tls, capsys):
    """bench's raw client and its private servers are plain: with TLS on it says so rather than fail later."""
    code, _ = _run("bench", "latency", "--servers", over_tls.address)
    assert code == 2
    message = capsys.readouterr().err
    assert "bench measures a plain memcached and TLS is on (MEMCACHEDLOCK_TLS_CA)" in message, message


def test_the_command_takes_tls_from_a_zope_instances_store_directive(tls_server, certs, tmp_path, monkeypatch):
    """``--zope-conf``: the ``tls_*`` attributes of ``<memcachedlock:store>`` reach the command as in Zope."""
    from test_cli_zope_conf import make_instance

    _use(monkeypatch, tls_server)  # the shell's environment has no TLS: plain, it would be refused
    store = '<memcachedlock:store backend="memcached" servers="%s" tls_ca="%s" tls_cert="%s" tls_key="%s" />' % (
        tls_server.address, certs.ca, certs.client_cert, certs.client_key)
    conf = make_instance(tmp_path, {}, store=store)
    code, text = _run("list", "--zope-conf", conf)
    assert code == 0 and "memcached %s (TLS)" % tls_server.address in text, text


def test_check_names_a_server_that_refuses_the_handshake(tls_server, certs, monkeypatch):
    _use(monkeypatch, tls_server, **certs.environ(client=False))
    code, text = _run("check")
    assert code == 1, text
    assert "memcached %s (TLS): UNREACHABLE" % tls_server.address in text, text
    assert "PROBLEM: unreachable (TLS: " in text, text


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("client_certificate", ["none", "from another CA"])
def test_a_client_without_a_certificate_from_the_ca_is_refused(tls_server, certs, monkeypatch, client_certificate):
    environ = certs.environ(client=False)
    if client_certificate == "from another CA":
        environ.update(MEMCACHEDLOCK_TLS_CERT=certs.other_client_cert, MEMCACHEDLOCK_TLS_KEY=certs.other_client_key)
    _use(monkeypatch, tls_server, **environ)
    message = str(_refused())
    assert "memcached %s (TLS): " % tls_server.address in message, message
    assert "certificate" in message, message


def test_a_server_certificate_from_another_ca_is_refused(tls_server, certs, monkeypatch):
    """The server is verified by the client's CA: a server the CA did not sign is not the lock store."""
    _use(monkeypatch, tls_server, MEMCACHEDLOCK_TLS_CA=certs.other_ca, MEMCACHEDLOCK_TLS_CERT=certs.client_cert,
         MEMCACHEDLOCK_TLS_KEY=certs.client_key)
    message = str(_refused())
    assert "memcached %s (TLS): server certificate refused" % tls_server.address in message, message


def test_the_host_name_is_checked_against_the_certificate(tls_server, certs, monkeypatch):
    """``localhost`` is in the certificate's DNS names, 127.0.0.1 in its IP addresses: both are the server."""
    _use(monkeypatch, tls_server, **certs.environ())
    monkeypatch.setenv("MEMCACHEDLOCK_SERVERS", "localhost:%d" % tls_server.port)
    registry.reset()
    with Lock("tls:by-name"):
        pass


def test_a_server_whose_certificate_names_another_host_is_refused(certs, monkeypatch):
    """A certificate from the site's CA is not enough: it must name the address the client dialled."""
    from tlscerts import tls_memcached

    misnamed = dataclasses.replace(certs, server_cert=certs.misnamed_server_cert,
                                   server_key=certs.misnamed_server_key)
    with tls_memcached(misnamed) as server:
        _use(monkeypatch, server, **certs.environ())
        message = str(_refused())
    assert "memcached %s (TLS): server certificate refused" % server.address in message, message
    assert "IP address mismatch" in message, message


def test_a_plain_client_against_a_tls_server_fails_fast(tls_server, monkeypatch):
    _use(monkeypatch, tls_server)
    message = str(_refused())
    assert message.startswith("memcached %s: " % tls_server.address) and "TLS" in message, message


def test_a_tls_client_against_a_plain_server_fails_fast(private_memcached, certs, monkeypatch):
    _use(monkeypatch, private_memcached, **certs.environ())
    message = str(_refused())
    assert "memcached %s (TLS): " % private_memcached.address in message, message


def test_the_fallback_store_takes_the_lock_directory_when_the_handshake_fails(tls_server, certs, lock_dir,
                                                                              monkeypatch, caplog):
    """As for an unreachable server, with one warning for the outage, naming the server with "(TLS)"."""
    _use(monkeypatch, tls_server, backend="fallback", **certs.environ(client=False))
    store = registry.get_backend()
    with caplog.at_level(logging.WARNING, logger="unimr.memcachedlock"):
        for name in ("tls:outage-1", "tls:outage-2"):
            with Lock(name) as held:
                assert store.secondary.holder(held.name) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "memcached %s (TLS) unreachable" % tls_server.address in warnings[0], warnings


# --------------------------------------------------------------------------- settings


def _through_environment(settings: dict[str, str], monkeypatch) -> config.Settings:
    return config.Settings.from_environ(settings)


def _through_configure(settings: dict[str, str], monkeypatch) -> config.Settings:
    return registry.configure(**{name[len("MEMCACHEDLOCK_"):].lower(): value for name, value in settings.items()})


def _through_zcml(settings: dict[str, str], monkeypatch) -> config.Settings:
    return store_directive_settings({name[len("MEMCACHEDLOCK_"):].lower(): value for name, value in settings.items()})


def _through_command_line(settings: dict[str, str], monkeypatch) -> config.Settings:
    """``memcachedlock check`` reads the environment; a bad setting is exit 2 with the message in its JSON."""
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    code, text = _run("check", "--json")
    problems = json.loads(text)["problems"]
    if code == 2:
        raise ConfigurationError(problems[0])
    return config.Settings.from_environ()


ROUTES = {"environment": _through_environment, "configure": _through_configure, "zcml": _through_zcml,
          "command-line": _through_command_line}


def _bad_cases(certs, tmp_path) -> list[tuple[dict[str, str], str]]:
    """(settings, the variable the error names); the value it names is that variable's."""
    not_pem = tmp_path / "not-pem.txt"
    not_pem.write_text("a CA, honestly\n")
    ca, cert, key = certs.ca, certs.client_cert, certs.client_key
    return [
        ({"MEMCACHEDLOCK_TLS_CA": str(tmp_path / "missing.pem")}, "MEMCACHEDLOCK_TLS_CA"),
        ({"MEMCACHEDLOCK_TLS_CA": str(tmp_path)}, "MEMCACHEDLOCK_TLS_CA"),  # unreadable as a file
        ({"MEMCACHEDLOCK_TLS_CA": str(not_pem)}, "MEMCACHEDLOCK_TLS_CA"),
        ({"MEMCACHEDLOCK_TLS_CA": certs.server_key}, "MEMCACHEDLOCK_TLS_CA"),
        ({"MEMCACHEDLOCK_TLS_CA": "ca.pem"}, "MEMCACHEDLOCK_TLS_CA"),
        ({"MEMCACHEDLOCK_TLS_CA": ca, "MEMCACHEDLOCK_TLS_CERT": cert}, "MEMCACHEDLOCK_TLS_CERT"),
        ({"MEMCACHEDLOCK_TLS_CA": ca, "MEMCACHEDLOCK_TLS_KEY": key}, "MEMCACHEDLOCK_TLS_KEY"),
        ({"MEMCACHEDLOCK_TLS_CERT": cert, "MEMCACHEDLOCK_TLS_KEY": key}, "MEMCACHEDLOCK_TLS_CERT"),
        ({"MEMCACHEDLOCK_TLS_CA": ca, "MEMCACHEDLOCK_TLS_CERT": cert, "MEMCACHEDLOCK_TLS_KEY": str(not_pem)},
         "MEMCACHEDLOCK_TLS_KEY"),
        ({"MEMCACHEDLOCK_TLS_CA": ca, "MEMCACHEDLOCK_TLS_CERT": cert, "MEMCACHEDLOCK_TLS_KEY":
          certs.other_client_key}, "MEMCACHEDLOCK_TLS_KEY"),  # not the certificate's key
    ]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_bad_tls_setting_is_refused_at_start_naming_it(route, certs, tmp_path, monkeypatch):
    for settings, variable in _bad_cases(certs, tmp_path):
        registry.reset()
        with pytest.raises(Exception) as info:
            ROUTES[route](settings, monkeypatch)
        message = str(info.value)
        assert isinstance(info.value, ConfigurationError) or isinstance(info.value.__cause__, ConfigurationError), \
            (route, settings, repr(info.value))
        assert variable in message and repr(settings[variable]) in message, (route, message)
        for name in settings:
            monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_good_tls_settings_come_in_every_way(route, certs, monkeypatch):
    given = {name: " %s " % value for name, value in certs.environ().items()}
    settings = ROUTES[route](given, monkeypatch)
    assert (settings.tls_ca, settings.tls_cert, settings.tls_key) == (certs.ca, certs.client_cert, certs.client_key)
    context = settings.tls_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_tls_is_refused_for_a_unix_socket_server(certs):
    with pytest.raises(ConfigurationError) as info:
        config.Settings(servers="/run/memcached/memcached.sock", tls_ca=certs.ca)
    assert "/run/memcached/memcached.sock" in str(info.value) and "MEMCACHEDLOCK_TLS_CA" in str(info.value)


def test_a_key_with_a_passphrase_is_refused_not_asked_for(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization

    with open(certs.client_key, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), None)
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigurationError) as info:
        config.Settings(tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=str(locked))
    assert "MEMCACHEDLOCK_TLS_KEY" in str(info.value) and "passphrase" in str(info.value)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    if sys.argv[1] == "counter":
        _counter_client(sys.argv[2], int(sys.argv[3]))
