"""TLS to memcached: the client context the settings describe, checked at start, and what a failure means.

Without TLS anyone who can reach a memcached port can take, break or
overwrite every lock and every zlock note in it.  ``MEMCACHEDLOCK_TLS_CA``
(a CA file) turns TLS on for every server; ``MEMCACHEDLOCK_TLS_CERT`` and
``MEMCACHEDLOCK_TLS_KEY`` give the client certificate a server started with
``-o ssl_verify_mode=2`` requires.  The server's certificate is always
verified against that CA, its host name or IP address included (an IP
address must be in the certificate's IP SAN): there is no switch to turn
that off, since a store someone else can impersonate grants the locks that
someone chooses.

Every file is checked when the settings are built, so a Zope instance with a
missing, unreadable or mismatched file refuses to start instead of locking
without TLS or failing on its first lock.  A passphrase-protected key is
refused too: OpenSSL would ask for the passphrase on the terminal, and a
server process has none.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
from collections.abc import Sequence

from pymemcache.exceptions import MemcacheUnexpectedCloseError

from .errors import ConfigurationError, describe

CA_VARIABLE = "MEMCACHEDLOCK_TLS_CA"
CERT_VARIABLE = "MEMCACHEDLOCK_TLS_CERT"
KEY_VARIABLE = "MEMCACHEDLOCK_TLS_KEY"

#: What each file must hold (a PEM block's label), by its variable.
_PEM_LABELS = {CA_VARIABLE: "CERTIFICATE-----", CERT_VARIABLE: "CERTIFICATE-----", KEY_VARIABLE: "PRIVATE KEY-----"}
#: Alerts a server sends when it does not accept the client's certificate (or its absence).
_CLIENT_CERT_REFUSED = ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED",
                        "SSLV3_ALERT_HANDSHAKE_FAILURE", "SSLV3_ALERT_CERTIFICATE_EXPIRED")
#: What OpenSSL says when the answer to a ClientHello is not TLS at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
            "UNKNOWN_PROTOCOL")


def tls_file(name: str, value: object) -> str:
    """A TLS setting's file, checked now: an absolute path to a readable regular file holding PEM.

    The path must be absolute for the reason a lock directory must: each
    process would resolve a relative one in its own working directory.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigurationError("%s=%r is not a file path" % (name, value))
    path = value.strip()
    if "\0" in path:
        raise ConfigurationError("%s=%r contains a NUL byte" % (name, value))
    if not os.path.isabs(path):
        raise ConfigurationError("%s=%r is not an absolute path: each process would resolve a relative one in "
                                 "its own working directory" % (name, value))
    if not os.path.isfile(path):
        why = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise ConfigurationError("%s=%r %s" % (name, value, why))
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError as exc:
        raise ConfigurationError("%s=%r cannot be read: %s" % (name, value, exc.strerror or exc)) from None
    if _PEM_LABELS[name] not in text:
        raise ConfigurationError("%s=%r holds no PEM %s" % (name, value, _PEM_LABELS[name].rstrip("-").lower()))
    return path


def check_tls_settings(ca: str, cert: str, key: str, unix_sockets: Sequence[str]) -> None:
    """ConfigurationError unless the three TLS settings (each ``""`` or a checked file) make sense together.

    A certificate needs its key and a key its certificate; either needs the
    CA (without it TLS is off, and the certificate would be ignored in
    silence).  A unix socket server cannot be reached over TLS (pymemcache
    connects to it in plain text), so it is refused while TLS is on.
    """
    if cert and not key:
        raise ConfigurationError("%s=%r is given without its key: set %s too" % (CERT_VARIABLE, cert, KEY_VARIABLE))
    if key and not cert:
        raise ConfigurationError("%s=%r is given without its certificate: set %s too"
                                 % (KEY_VARIABLE, key, CERT_VARIABLE))
    if (cert or key) and not ca:
        raise ConfigurationError("%s=%r is given without %s: TLS is on only with a CA that verifies the servers"
                                 % (CERT_VARIABLE, cert, CA_VARIABLE))
    if ca and unix_sockets:
        raise ConfigurationError("memcached server %s is a unix socket, which is not spoken over TLS "
                                 "(%s=%r): list its TCP address instead" % (unix_sockets[0], CA_VARIABLE, ca))
    if ca:
        client_context(ca, cert, key)


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """The context of every connection to memcached: the server verified against ``ca``, host name included.

    One context per set of files (as they are now on disk), so a process's
    connections share it; ConfigurationError names the file it refuses.
    """
    return _context(ca, cert, key, tuple(_stamp(path) for path in (ca, cert, key)))


def _stamp(path: str) -> tuple[int, int]:
    """What tells a file's new content from its old (a certificate renewed in place)."""
    if not path:
        return 0, 0
    try:
        found = os.stat(path)
    except OSError:
        return 0, 0
    return found.st_mtime_ns, found.st_size


@functools.lru_cache(maxsize=8)
def _context(ca: str, cert: str, key: str, stamps: tuple[tuple[int, int], ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError("%s=%r is not a CA certificate file: %s" % (CA_VARIABLE, ca, _reason(exc))) from None
    if cert:
        try:
            context.load_cert_chain(cert, key, password=functools.partial(_no_passphrase, key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError("%s=%r and %s=%r are not a certificate and its key: %s"
                                     % (CERT_VARIABLE, cert, KEY_VARIABLE, key, _reason(exc))) from None
    return context


def _no_passphrase(key: str) -> bytes:
    raise ConfigurationError("%s=%r is protected by a passphrase, which a server process cannot type: give the key "
                             "without one, readable only by the user the process runs as" % (KEY_VARIABLE, key))


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc) or type(exc).__name__


def wrap(sock: socket.socket, context: ssl.SSLContext, host: str) -> ssl.SSLSocket:
    """``sock`` (not yet connected) speaking TLS through ``context``; ``connect`` then does the handshake.

    ``host`` is checked against the server's certificate: a name against its
    DNS names, an IP address against its IP addresses.
    """
    return context.wrap_socket(sock, server_hostname=host)


def label(address: object, context: ssl.SSLContext | None) -> str:
    """A server as messages name it: ``127.0.0.1:11211``, or ``127.0.0.1:11211 (TLS)``."""
    return "%s (TLS)" % (address,) if context is not None else str(address)


def describe_failure(exc: BaseException) -> str:
    """What a failed request over TLS means, for a BackendUnavailable that names the server before it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("server certificate refused: %s (it must be signed by %s's CA and name the host or IP address "
                "in MEMCACHEDLOCK_SERVERS)" % (exc.verify_message or _reason(exc), CA_VARIABLE))
    reason = str(getattr(exc, "reason", "") or "")
    if isinstance(exc, ssl.SSLError) and reason in _CLIENT_CERT_REFUSED:
        return "handshake refused: the server did not accept this client's certificate (%s; see %s and %s)" % (
            reason, CERT_VARIABLE, KEY_VARIABLE)
    if isinstance(exc, ssl.SSLError) and reason in _NOT_TLS:
        return "handshake failed: the server does not speak TLS (%s)" % reason
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, MemcacheUnexpectedCloseError)):
        return "connection closed by the server (does it accept this client's certificate? see %s): %s" % (
            CERT_VARIABLE, describe(exc))
    if isinstance(exc, ssl.SSLError):
        return "handshake refused: %s" % _reason(exc)
    if isinstance(exc, TimeoutError):
        return "%s (no TLS answer in time: a hung server, or one that does not speak TLS)" % describe(exc)
    return describe(exc)


class TLSFailure(ConnectionError):
    """A connection of the package's own (not pymemcache's) whose TLS handshake or exchange failed.

    An OSError, as every other failure to reach a server, so callers that
    catch those need no change; its message says what went wrong over TLS.
    """


__all__ = ["CA_VARIABLE", "CERT_VARIABLE", "KEY_VARIABLE", "TLSFailure", "check_tls_settings", "client_context",
           "describe_failure", "label", "tls_file", "wrap"]
