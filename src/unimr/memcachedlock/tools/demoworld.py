"""The demo's world: its temporary directory and processes, the lock store of its clients, ZEO.

The lock store is chosen as a site would (see ``choose_store``); the ZEO
server runs on a temporary FileStorage and holds one hot object per run.
Every process started here gets SIGTERM when the demo dies, and
``Workspace.close()`` stops them all and removes the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..config import ServerAddress
from ..tls import CA_VARIABLE, CERT_VARIABLE, KEY_VARIABLE
from .democlient import MODES
from .servers import free_port

logger = logging.getLogger(__name__)


class DemoError(Exception):
    """The demo could not run; the message says why in one line."""

def _die_with_parent() -> None:
    """In a server child: get SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def memcached_version(address: ServerAddress, timeout: float = 1.0,
                      tls_context: ssl.SSLContext | None = None) -> str | None:
    """The server's version if something answers as memcached at ``address`` (over TLS with ``tls_context``)."""
    from ..backends.memcached import server_command

    try:
        text = server_command(address, b"version", timeout, tls_context).strip()
    except OSError:
        return None
    return text[8:] if text.startswith("VERSION ") else None


@dataclasses.dataclass
class LockStore:
    """The store the demo's clients use: its kind, the environment to give them, a description."""

    kind: str
    env: dict[str, str]
    description: str


class Workspace:
    """The demo's temporary directory and every process started in it; ``close()`` stops and removes them."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="memcachedlock-demo-")
        self.procs: list[subprocess.Popen[bytes]] = []

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def spawn(self, args: list[str], **popen_kw: Any) -> subprocess.Popen[bytes]:
        """A process in its own session, working in the temporary directory, stopped by ``close()``."""
        proc = subprocess.Popen(args, cwd=self.tmp, start_new_session=True, **popen_kw)
        self.procs.append(proc)
        return proc

    def spawn_server(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """A server process logging to ``log_name``, which gets SIGTERM when the demo dies."""
        with open(self.path(log_name), "ab") as log:
            return self.spawn(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=_die_with_parent)

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int, what: str, log_name: str,
                       timeout: float = 30.0) -> None:
        """Return once 127.0.0.1:``port`` accepts; DemoError with the log's last line if ``proc`` died or
        ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = self.last_line(log_name)
                raise DemoError(
                    "%s did not start on 127.0.0.1:%d%s" % (what, port, (": " + tail) if tail else "")
                )
            time.sleep(0.05)

    def last_line(self, log_name: str) -> str:
        """The last line of a log that is not blank, stripped ("" if none)."""
        try:
            with open(self.path(log_name), "rb") as f:
                lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def close(self) -> None:
        """Stop every process started here and remove the temporary directory.

        A second Ctrl-C while this runs is ignored, so the cleanup always finishes.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            self._stop_all()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def _stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.debug("demo process %d ignored SIGTERM for 5s: killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the lock store the clients use


def _private_memcached(workspace: Workspace, binary: str) -> LockStore:
    port = free_port()
    args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16", "-t", "1"]
    if os.getuid() == 0:
        args += ["-u", "root"]
    proc = workspace.spawn_server(args, "memcached.log")
    workspace.wait_listening(proc, port, "memcached", "memcached.log")
    version = memcached_version(ServerAddress("127.0.0.1", port)) or "?"
    return LockStore(
        "memcached",
        {"MEMCACHEDLOCK_BACKEND": "memcached", "MEMCACHEDLOCK_SERVERS": "127.0.0.1:%d" % port},
        "a private memcached %s on 127.0.0.1:%d (started for the demo)" % (version, port),
    )


def _file_store(workspace: Workspace, why: str) -> LockStore:
    directory = workspace.path("locks")
    return LockStore(
        "file",
        {"MEMCACHEDLOCK_BACKEND": "file", "MEMCACHEDLOCK_DIR": directory},
        "the file store (flock in %s)%s" % (directory, why),
    )


def choose_store(workspace: Workspace, choice: str, environ: Mapping[str, str] | None = None) -> LockStore:
    """MEMCACHEDLOCK_SERVERS if reachable, else a private memcached, else the file store.

    ``choice`` is ``--backend``: ``file`` takes the file store at once, ``memcached`` refuses to fall
    back to it.
    """
    from ..config import Settings, parse_servers

    env = os.environ if environ is None else environ
    if choice == "file":
        return _file_store(workspace, " (--backend file)")
    reasons = []
    configured = env.get("MEMCACHEDLOCK_SERVERS", "").strip()
    if configured:
        tls = {name: env[name] for name in (CA_VARIABLE, CERT_VARIABLE, KEY_VARIABLE) if env.get(name, "").strip()}
        servers = parse_servers(configured)
        context = Settings.from_environ(tls).tls_context
        down = [s for s in servers if memcached_version(s, tls_context=context) is None]
        if not down:
            return LockStore(
                "memcached",
                {"MEMCACHEDLOCK_BACKEND": "memcached", "MEMCACHEDLOCK_SERVERS": configured,
                 "MEMCACHEDLOCK_PREFIX": env.get("MEMCACHEDLOCK_PREFIX", "memcachedlock:"), **tls},
                "memcached %s%s (MEMCACHEDLOCK_SERVERS)" % (configured, " (TLS)" if context is not None else ""),
            )
        reasons.append("MEMCACHEDLOCK_SERVERS=%s does not answer (%s)" % (configured, ", ".join(str(s) for s in down)))
    else:
        reasons.append("MEMCACHEDLOCK_SERVERS is not set")
    binary = shutil.which("memcached")
    if binary is not None:
        return _private_memcached(workspace, binary)
    if choice == "memcached":
        raise DemoError("--backend memcached: %s and no memcached binary is on PATH" % reasons[0])
    reasons.append("no memcached binary on PATH")
    return _file_store(workspace, " because " + " and ".join(reasons))


# -- the ZEO server and its hot objects


def start_zeo(workspace: Workspace) -> int:
    """runzeo on a temporary FileStorage on a free loopback port; returns the port."""
    port = free_port()
    proc = workspace.spawn_server(
        [sys.executable, "-m", "ZEO.runzeo", "-a", "127.0.0.1:%d" % port, "-f", workspace.path("Data.fs")],
        "zeo.log",
    )
    workspace.wait_listening(proc, port, "ZEO server", "zeo.log")
    return port


@contextlib.contextmanager
def zeo_root(port: int) -> Iterator[Any]:
    """The ZEO server's root in a transaction of its own (committed if the block succeeds)."""
    import transaction
    import ZEO

    db = ZEO.DB(("127.0.0.1", port))
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            with tm:
                yield conn.root()
        finally:
            conn.close()
    finally:
        db.close()


def create_objects(port: int) -> None:
    """One hot object per run, its count at 0."""
    from persistent.mapping import PersistentMapping

    with zeo_root(port) as root:
        for mode in MODES:
            root["hot-" + mode] = PersistentMapping(count=0)


def read_counts(port: int) -> dict[str, int]:
    """Each run's final count: the writes that really reached the database."""
    with zeo_root(port) as root:
        return {mode: root["hot-" + mode]["count"] for mode in MODES}
