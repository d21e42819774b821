"""Settings, read once from the environment (or given in code or ZCML).

Environment variables:

``MEMCACHEDLOCK_SERVERS``
    Comma-separated ``host:port``, ``[ipv6]:port`` or unix socket paths
    (``/run/memcached.sock``).  Default ``127.0.0.1:11211``.
``MEMCACHEDLOCK_BACKEND``
    ``fallback`` (default: memcached, and the file backend while memcached is
    unreachable), ``memcached`` (memcached only) or ``file`` (one host only).
``MEMCACHEDLOCK_DIR``
    Directory of the file backend.  Default ``<tmp>/unimr.memcachedlock-<uid>``.
``MEMCACHEDLOCK_CONNECT_TIMEOUT`` / ``MEMCACHEDLOCK_IO_TIMEOUT``
    Seconds before an unreachable / hung memcached counts as down (0.5 / 1.0).
``MEMCACHEDLOCK_RETRY``
    Seconds a down memcached is left alone before it is tried again (2.0).
``MEMCACHEDLOCK_PREFIX``
    Namespace of the package's keys in memcached (``memcachedlock:``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tempfile
import threading
from typing import Mapping

from .errors import ConfigurationError

DEFAULT_SERVERS = "127.0.0.1:11211"
DEFAULT_PORT = 11211
BACKEND_KINDS = ("fallback", "memcached", "file")


@dataclasses.dataclass(frozen=True)
class ServerAddress:
    """One memcached server: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def pymemcache_server(self) -> tuple[str, int] | str:
        return self.path if self.path is not None else (self.host, self.port)

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        if ":" in (self.host or ""):
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


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


def _seconds(name: str, text: str, default: float, low: float = 0.0, high: float = 3600.0) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError("%s=%r is not a number of seconds" % (name, text)) from None
    if math.isnan(value) or not low < value <= high:
        raise ConfigurationError("%s=%r must be above %s and at most %s seconds" % (name, text, low, high))
    return value


def default_lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "unimr.memcachedlock-%d" % os.getuid())


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides which lock store is used and how."""

    servers: tuple[ServerAddress, ...] = (ServerAddress("127.0.0.1", DEFAULT_PORT),)
    backend: str = "fallback"
    lock_dir: str = dataclasses.field(default_factory=default_lock_dir)
    connect_timeout: float = 0.5
    io_timeout: float = 1.0
    retry: float = 2.0
    prefix: str = "memcachedlock:"

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_KINDS:
            raise ConfigurationError(
                "unknown lock backend %r: use one of %s" % (self.backend, ", ".join(BACKEND_KINDS))
            )
        if not self.servers:
            raise ConfigurationError("no memcached server configured")
        if not self.prefix or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in self.prefix) or len(self.prefix) > 40:
            raise ConfigurationError("bad key prefix %r: printable ASCII, no spaces, 40 characters at most" % self.prefix)
        if not self.lock_dir:
            raise ConfigurationError("empty lock directory")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        return cls(
            servers=parse_servers(env.get("MEMCACHEDLOCK_SERVERS", DEFAULT_SERVERS)),
            backend=env.get("MEMCACHEDLOCK_BACKEND", "fallback").strip().lower() or "fallback",
            lock_dir=env.get("MEMCACHEDLOCK_DIR") or default_lock_dir(),
            connect_timeout=_seconds("MEMCACHEDLOCK_CONNECT_TIMEOUT", env.get("MEMCACHEDLOCK_CONNECT_TIMEOUT"), 0.5, high=60),
            io_timeout=_seconds("MEMCACHEDLOCK_IO_TIMEOUT", env.get("MEMCACHEDLOCK_IO_TIMEOUT"), 1.0, high=60),
            retry=_seconds("MEMCACHEDLOCK_RETRY", env.get("MEMCACHEDLOCK_RETRY"), 2.0),
            prefix=env.get("MEMCACHEDLOCK_PREFIX", "memcachedlock:"),
        )


_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """The settings in force: given by ``configure()``, else read once from the environment."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_environ()
        return _settings


def replace_settings(**changes) -> Settings:
    """Put ``changes`` in force; unnamed settings keep their values.

    ``servers`` may be a string in ``MEMCACHEDLOCK_SERVERS`` form.  Only the
    settings: :func:`.registry.configure` also drops the store built from them.
    """
    global _settings
    servers = changes.get("servers")
    if isinstance(servers, str):
        changes["servers"] = parse_servers(servers)
    new = dataclasses.replace(get_settings(), **changes)
    with _lock:
        _settings = new
    return new


def forget_settings() -> None:
    """Read the environment again on the next ``get_settings()``."""
    global _settings
    with _lock:
        _settings = None
