"""A private memcached on a free loopback port, for the tests, the benchmarks and the demo.

``MemcachedServer`` starts the ``memcached`` binary (./run-tests installs it
from Debian's packages when it is missing), and can kill, stop (SIGSTOP:
hung), continue and restart it on the same port, which is what the fault
tests need.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from types import TracebackType


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listens on %s:%d after %.0fs" % (host, port, timeout)) from exc
            time.sleep(0.02)


class MemcachedServer:
    """A memcached process on 127.0.0.1:port that a test controls."""

    def __init__(self, port: int | None = None, memory_mb: int = 64, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("memcached")
        if binary is None:
            raise RuntimeError("memcached is not installed: run ./run-tests, which installs it")
        self.binary = binary
        self.port = port or free_port()
        self.memory_mb = memory_mb
        self.extra = tuple(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def start(self) -> MemcachedServer:
        args = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
                "-m", str(self.memory_mb), "-t", "2", *self.extra]
        if os.getuid() == 0:
            args += ["-u", "root"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: every lock is gone, the port refuses connections."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGSTOP: the server hangs but the kernel still accepts connections.

        Returns once the process is really stopped: the signal is delivered
        asynchronously, and a request served in between would make a test flaky.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while self._state(self.proc.pid) not in ("T", "t"):
            if time.monotonic() > deadline:
                raise RuntimeError("memcached %d did not stop within 5 s" % self.proc.pid)
            time.sleep(0.005)

    def _state(self, pid: int) -> str:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]

    def cont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port: locks lost, cas counter reset."""
        self.kill()
        self.start()

    def fill(self, items: int = 40000) -> None:
        """Memory pressure: ``items`` cache items of every size near a lock's or a note's, kept forever."""
        from pymemcache.client.base import Client

        client = Client(("127.0.0.1", self.port), default_noreply=False, timeout=5)
        try:
            for start in range(0, items, 1000):
                batch = range(start, min(start + 1000, items))
                client.set_many({b"fill%07d" % n: b"f" * (40 + n % 220) for n in batch}, expire=0)
        finally:
            client.close()

    def stats(self) -> dict[str, str]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        stats = {}
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                stats[parts[1]] = parts[2]
        return stats

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"flush_all\r\n")
            sock.recv(100)

    def __enter__(self) -> MemcachedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.proc is not None:
            self.cont() if self.proc.poll() is None else None
        self.kill()
