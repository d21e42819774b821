"""Settings, read once from the environment (or given in code or ZCML).

Environment variables:

``MEMCACHEDLOCK_SERVERS``
    Comma-separated ``host:port``, ``[ipv6]:port`` or unix socket paths
    (``/run/memcached.sock``).  Default ``127.0.0.1:11211``.
``MEMCACHEDLOCK_BACKEND``
    ``fallback`` (default: memcached, and the file backend while memcached is
    unreachable), ``memcached`` (memcached only) or ``file`` (one host only).
``MEMCACHEDLOCK_DIR``
    Directory of the file backend, an absolute path.  Default
    ``<tmp>/unimr.memcachedlock-<uid>``.
``MEMCACHEDLOCK_CONNECT_TIMEOUT`` / ``MEMCACHEDLOCK_IO_TIMEOUT``
    Seconds before an unreachable / hung memcached counts as down (0.5 / 1.0).
``MEMCACHEDLOCK_RETRY``
    Seconds a down memcached is left alone before it is tried again (2.0).
``MEMCACHEDLOCK_PREFIX``
    Namespace of the package's keys in memcached (``memcachedlock:``).
``MEMCACHEDLOCK_TXN_WAIT``
    Longest wait for a lock inside a transaction, in seconds (5.0; see
    :mod:`.zodb`).
``MEMCACHEDLOCK_METRICS_DIR`` / ``MEMCACHEDLOCK_METRICS_INTERVAL``
    Directory, an absolute path, where each process writes its lock metrics
    (none: no snapshot files), and the seconds between two writes (60.0,
    at least 0.1; see :mod:`.metrics`).
``MEMCACHEDLOCK_TLS_CA``
    A CA file, an absolute path: TLS to every memcached server, whose
    certificate must be signed by that CA and name the server's host or IP
    address (always verified; unset: plain connections).  See :mod:`.tls`.
``MEMCACHEDLOCK_TLS_CERT`` / ``MEMCACHEDLOCK_TLS_KEY``
    The client certificate and its key (absolute paths, PEM, the key without
    a passphrase), for servers that require one (``ssl_verify_mode=2``); only
    together, and only with ``MEMCACHEDLOCK_TLS_CA``.

One rule for every setting, however it comes in (the environment, zope.conf's
``<environment>``, ``configure()``, a ``<memcachedlock:store>`` attribute, a
command-line option): surrounding whitespace is ignored, and a value that is
then empty counts as not given -- an unset variable (the default), a keyword
not passed to ``configure()`` (the value in force stays), an attribute left
out.  A template that leaves a value out writes ``NAME `` with nothing after
it; that must not stop a Zope instance from starting, nor mean anything but
"not set".  Every other value is checked, and a bad one is a
ConfigurationError naming the variable and the value.  A directory must be
absolute: a relative one would be resolved in each process's own working
directory, and processes started in different directories would lock in
different places.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping

from .errors import ConfigurationError
from .tls import check_tls_settings, client_context, tls_file

DEFAULT_SERVERS = "127.0.0.1:11211"
DEFAULT_PORT = 11211
BACKEND_KINDS = ("fallback", "memcached", "file")
#: Default of ``MEMCACHEDLOCK_TXN_WAIT``: longest wait for a lock inside a transaction.
DEFAULT_TXN_WAIT = 5.0
#: Default and bounds of ``MEMCACHEDLOCK_METRICS_INTERVAL``, in seconds.
DEFAULT_METRICS_INTERVAL = 60.0
MIN_METRICS_INTERVAL = 0.1
MAX_METRICS_INTERVAL = 86400.0


@dataclasses.dataclass(frozen=True)
class ServerAddress:
    """One memcached server: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def complete(self) -> bool:
        """True if the address names a unix socket path, or a host and a port."""
        return self.path is not None or (self.host is not None and self.port is not None)

    @property
    def pymemcache_server(self) -> tuple[str, int] | str:
        return self.path if self.path is not None else self._host_and_port()

    def _host_and_port(self) -> tuple[str, int]:
        if self.host is None or self.port is None:
            raise ConfigurationError("memcached server %r has neither a socket path nor a host and a port" % (self,))
        return self.host, self.port

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host, port = self._host_and_port()
        if ":" in host:
            return "[%s]:%d" % (host, port)
        return "%s:%d" % (host, port)


def _looks_like_ipv6(text: str) -> bool:
    """True if ``text`` is an IPv6 address, perhaps with a port glued on (``::1:11211``)."""
    for candidate in (text, text.rpartition(":")[0]):
        try:
            ipaddress.IPv6Address(candidate)
            return True
        except ValueError:
            pass
    return False


def parse_server(entry: str) -> ServerAddress:
    """Parse one entry of ``MEMCACHEDLOCK_SERVERS``; ConfigurationError names it if bad."""
    text = entry.strip()
    if not text:
        raise ConfigurationError("empty memcached server entry in %r" % entry)
    if ";" in text:
        raise ConfigurationError(
            "bad memcached server %r: separate servers with commas, not ';' (a:11211,b:11211)" % entry)
    if not text.startswith(("/", "unix:")) and any(c.isspace() for c in text):
        raise ConfigurationError(
            "bad memcached server %r: it contains whitespace; separate servers with commas "
            "(a:11211,b:11211)" % entry)
    if not text.isprintable():
        raise ConfigurationError("bad memcached server %r: it contains control characters" % entry)
    if "://" in text:
        raise ConfigurationError(
            "bad memcached server %r: give host:port without a URL scheme (%r is not understood)"
            % (entry, text.split("://", 1)[0] + "://"))
    if text.startswith("unix:"):
        text = text[5:]
        if not text.startswith("/"):
            raise ConfigurationError("unix socket path must be absolute: %r" % entry)
    if text.startswith("/"):
        return ServerAddress(path=text)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError("bad IPv6 address in memcached server %r" % entry) from None
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(
                "bad memcached server %r: write [ipv6]:port" % entry
            )
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    else:
        if text.count(":") > 1:
            if _looks_like_ipv6(text):
                raise ConfigurationError(
                    "bad memcached server %r: put an IPv6 address in brackets, [::1]:11211" % entry
                )
            raise ConfigurationError("bad memcached server %r: more than one ':' (write host:port)" % entry)
        host, _, port_text = text.partition(":")
        if not port_text and text.endswith(":"):
            raise ConfigurationError("memcached server %r has an empty port" % entry)
        port_text = port_text or str(DEFAULT_PORT)
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ConfigurationError("bad host in memcached server %r" % entry)
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            "bad port %r in memcached server %r (1-65535)" % (port_text, entry)
        )
    return ServerAddress(host=host, port=int(port_text))


def parse_servers(value: str) -> tuple[ServerAddress, ...]:
    """Parse a comma-separated server list; duplicates are an error (they would skew hashing)."""
    if value is None or not value.strip():
        raise ConfigurationError("MEMCACHEDLOCK_SERVERS is empty: %r" % (value,))
    parts = value.split(",")
    for number, part in enumerate(parts, 1):
        if not part.strip():
            raise ConfigurationError(
                "memcached server list %r has an empty entry (number %d)" % (value, number)
            )
    servers = tuple(parse_server(part) for part in parts)
    seen = set()
    for server in servers:
        if str(server) in seen:
            raise ConfigurationError("memcached server %s is listed twice in %r" % (server, value))
        seen.add(str(server))
    return servers


def is_unset(value: object) -> bool:
    """True for None and for text that is empty or only whitespace: such a value counts as not given.

    zope.conf's ``<environment>`` and buildout's ``environment-vars`` write
    ``NAME `` when a template leaves the value out; that means "not set",
    for every setting alike (see the module docstring).
    """
    return value is None or (isinstance(value, str) and not value.strip())


def _text(name: str, value: object) -> str:
    """``value`` as text without its surrounding whitespace; a path-like object is accepted."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigurationError("%s=%r is not text" % (name, value))
    return value.strip()


def _seconds(name: str, text: object, default: float, low: float = 0.0, high: float = 3600.0) -> float:
    """Seconds above ``low`` and at most ``high`` from text or a number; ``default`` if not given.

    ``name`` (the variable) and the value are in the ConfigurationError.
    """
    if is_unset(text):
        return default
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ConfigurationError("%s=%r is not a number of seconds" % (name, text))
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError("%s=%r is not a number of seconds" % (name, text)) from None
    if math.isnan(value) or not low < value <= high:
        raise ConfigurationError("%s=%r must be above %s and at most %s seconds" % (name, text, low, high))
    return value


def absolute_directory(name: str, value: object) -> str:
    """A directory setting (lock or metrics directory), checked: absolute, no NUL byte.

    A relative path would be resolved in each process's own working directory:
    two processes started in different directories would then lock (or
    count) in different places, and both hold one key.  A NUL byte would only
    fail on first use, with an error naming nothing.
    """
    text = _text(name, value)
    if "\0" in text:
        raise ConfigurationError("%s=%r contains a NUL byte" % (name, value))
    if not os.path.isabs(text):
        raise ConfigurationError(
            "%s=%r is not an absolute path: a relative directory is resolved in each process's own working "
            "directory, so processes started in different directories would not exclude each other"
            % (name, value))
    return text


def _servers(name: str, value: object) -> tuple[ServerAddress, ...]:
    if isinstance(value, (tuple, list)) and value and all(isinstance(s, ServerAddress) and s.complete for s in value):
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigurationError("%s=%r is not a server list" % (name, value))
    try:
        return parse_servers(value)
    except ConfigurationError as exc:
        # Name the variable, and the whole list unless the message quotes it already (one entry).
        given = "" if repr(value) in str(exc) else "=%r" % (value,)
        raise ConfigurationError("%s%s: %s" % (name, given, exc)) from None


def _backend(name: str, value: object) -> str:
    kind = _text(name, value).lower()
    if kind not in BACKEND_KINDS:
        raise ConfigurationError("%s=%r is not a lock store: use one of %s" % (name, value, ", ".join(BACKEND_KINDS)))
    return kind


def _prefix(name: str, value: object) -> str:
    prefix = _text(name, value)
    if any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in prefix) or len(prefix) > 40:
        raise ConfigurationError(
            "%s=%r is not a key prefix: printable ASCII, no spaces, 40 characters at most" % (name, value))
    return prefix


def _metrics_interval(name: str, value: object) -> float:
    """Seconds between two metrics snapshot files: at least MIN_METRICS_INTERVAL, at most a day."""
    seconds = _seconds(name, value, DEFAULT_METRICS_INTERVAL, high=MAX_METRICS_INTERVAL)
    if seconds < MIN_METRICS_INTERVAL:
        raise ConfigurationError("%s=%r must be at least %s seconds: a shorter one would rewrite the snapshot "
                                 "file in a busy loop" % (name, value, MIN_METRICS_INTERVAL))
    return seconds


def default_lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "unimr.memcachedlock-%d" % os.getuid())


#: Settings field -> (its environment variable, its parser: ``(variable, given value) -> value``).
FIELDS: dict[str, tuple[str, Callable[[str, object], object]]] = {
    "servers": ("MEMCACHEDLOCK_SERVERS", _servers),
    "backend": ("MEMCACHEDLOCK_BACKEND", _backend),
    "lock_dir": ("MEMCACHEDLOCK_DIR", absolute_directory),
    "connect_timeout": ("MEMCACHEDLOCK_CONNECT_TIMEOUT", functools.partial(_seconds, default=0.5, high=60)),
    "io_timeout": ("MEMCACHEDLOCK_IO_TIMEOUT", functools.partial(_seconds, default=1.0, high=60)),
    "retry": ("MEMCACHEDLOCK_RETRY", functools.partial(_seconds, default=2.0)),
    "prefix": ("MEMCACHEDLOCK_PREFIX", _prefix),
    "txn_wait": ("MEMCACHEDLOCK_TXN_WAIT", functools.partial(_seconds, default=DEFAULT_TXN_WAIT)),
    "metrics_dir": ("MEMCACHEDLOCK_METRICS_DIR", absolute_directory),
    "metrics_interval": ("MEMCACHEDLOCK_METRICS_INTERVAL", _metrics_interval),
    "tls_ca": ("MEMCACHEDLOCK_TLS_CA", tls_file),
    "tls_cert": ("MEMCACHEDLOCK_TLS_CERT", tls_file),
    "tls_key": ("MEMCACHEDLOCK_TLS_KEY", tls_file),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides which lock store is used and how, how long a lock is waited for inside a
    transaction, and where the lock metrics are written.

    Every field is parsed and checked here, whoever builds the settings (the
    environment, ``configure()``, ZCML, the command line), so the same value
    means the same thing and is refused in the same words on every way in.
    A field given as None or blank text gets its default.
    """

    servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", DEFAULT_PORT),)
    backend: str = "fallback"
    lock_dir: str = dataclasses.field(default_factory=default_lock_dir)
    connect_timeout: float = 0.5
    io_timeout: float = 1.0
    retry: float = 2.0
    prefix: str = "memcachedlock:"
    txn_wait: float = DEFAULT_TXN_WAIT
    #: ``""``: no metrics snapshot files.
    metrics_dir: str = ""
    metrics_interval: float = DEFAULT_METRICS_INTERVAL
    #: ``""``: no TLS (see :mod:`.tls`); else the CA file, and the client certificate and key (or ``""``).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __init__(self, servers: object = None, backend: object = None, lock_dir: object = None,
                 connect_timeout: object = None, io_timeout: object = None, retry: object = None,
                 prefix: object = None, txn_wait: object = None, metrics_dir: object = None,
                 metrics_interval: object = None, tls_ca: object = None, tls_cert: object = None,
                 tls_key: object = None) -> None:
        """Each field from its value as given: text (as its environment variable), a value of the field's
        type, or None or blank text for its default (the annotations above are the fields as parsed).
        The TLS files are then checked together (see :func:`.tls.check_tls_settings`)."""
        given = dict(servers=servers, backend=backend, lock_dir=lock_dir, connect_timeout=connect_timeout,
                     io_timeout=io_timeout, retry=retry, prefix=prefix, txn_wait=txn_wait,
                     metrics_dir=metrics_dir, metrics_interval=metrics_interval, tls_ca=tls_ca, tls_cert=tls_cert,
                     tls_key=tls_key)
        for field in dataclasses.fields(self):
            value = given[field.name]
            if is_unset(value):
                value = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
            else:
                variable, parse = FIELDS[field.name]
                value = parse(variable, value)
            object.__setattr__(self, field.name, value)
        check_tls_settings(self.tls_ca, self.tls_cert, self.tls_key,
                           [server.path for server in self.servers if server.path is not None])

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of every connection to memcached, or None without ``MEMCACHEDLOCK_TLS_CA``."""
        return client_context(self.tls_ca, self.tls_cert, self.tls_key) if self.tls_ca else None

    def replace(self, **changes: object) -> Settings:
        """These settings with ``changes``, each given as to the constructor (``dataclasses.replace`` for
        values given as text, which its typed form refuses)."""
        given: dict[str, object] = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        given.update(changes)
        return type(self)(**given)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings ``environ`` (default ``os.environ``) describes; ConfigurationError names a bad value."""
        env = os.environ if environ is None else environ
        return cls(**{name: env.get(variable) for name, (variable, _) in FIELDS.items()})


_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """The settings in force: given by ``configure()``, else read once from the environment."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_environ()
        return _settings


def replace_settings(**changes: object) -> Settings:
    """Put ``changes`` in force; unnamed settings keep their values.

    A value is given as its environment variable would be, or as the field's
    type (``servers`` a string in ``MEMCACHEDLOCK_SERVERS`` form or a tuple of
    ServerAddress).  None or blank text is a setting not given: it keeps its
    value, as an empty variable is an unset one.  Only the
    settings: :func:`.registry.configure` also drops the store built from them.
    """
    global _settings
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise TypeError("unknown setting(s) %s: use %s" % (", ".join(unknown), ", ".join(FIELDS)))
    given = {name: value for name, value in changes.items() if not is_unset(value)}
    new = get_settings().replace(**given)
    with _lock:
        _settings = new
    return new


def forget_settings() -> None:
    """Read the environment again on the next ``get_settings()``."""
    global _settings
    with _lock:
        _settings = None
