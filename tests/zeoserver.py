"""A real ZEO server for the tests and benchmarks: ``runzeo`` on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

from servers import free_port, stop_process, unmeasured, wait_for_port


class ZEOServer:
    """``runzeo -a 127.0.0.1:PORT -f Data.fs`` in a temporary directory."""

    def __init__(self, directory: str | None = None, port: int | None = None) -> None:
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="mcl-zeo-")
        self.directory = directory or self._tmp.name
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def spawn(self) -> ZEOServer:
        """Start the process without waiting for it to listen (``start`` waits)."""
        runzeo = os.path.join(os.path.dirname(sys.executable), "runzeo")
        with open(os.path.join(self.directory, "zeo.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [runzeo, "-a", "127.0.0.1:%d" % self.port, "-f", os.path.join(self.directory, "Data.fs")],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.directory,
                env=unmeasured(os.environ),  # ZEO's code only
            )
        return self

    def start(self) -> ZEOServer:
        if self.proc is None:
            self.spawn()
        wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None

    def __enter__(self) -> ZEOServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


class ZEOServerSpares:
    """Fresh ZEO servers without their start-up in each test's time: while a test uses one server, the
    next one starts, and a used one is stopped and removed in the background (a server takes 0.2 s to
    start and 0.1 s to stop, and over a hundred tests ask for one)."""

    def __init__(self) -> None:
        self._spare: ZEOServer | None = None
        self._stopping: list[threading.Thread] = []

    def take(self) -> ZEOServer:
        """A started server of the caller's own; the next one starts now."""
        server = self._spare if self._spare is not None else ZEOServer().spawn()
        self._spare = ZEOServer().spawn()
        return server.start()

    def give_back(self, server: ZEOServer) -> None:
        """Stop ``server`` and remove its directory, in the background."""
        thread = threading.Thread(target=server.__exit__, args=(None, None, None), name="zeo-stop", daemon=True)
        thread.start()
        self._stopping = [t for t in self._stopping if t.is_alive()] + [thread]

    def close(self) -> None:
        """Stop the spare and wait for every server given back to be gone."""
        if self._spare is not None:
            self._spare.__exit__(None, None, None)
            self._spare = None
        for thread in self._stopping:
            thread.join(30)
        self._stopping = []
