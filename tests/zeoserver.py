"""A real ZEO server for the tests and benchmarks: ``runzeo`` on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

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

    def start(self) -> ZEOServer:
        runzeo = os.path.join(os.path.dirname(sys.executable), "runzeo")
        with open(os.path.join(self.directory, "zeo.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [runzeo, "-a", "127.0.0.1:%d" % self.port, "-f", os.path.join(self.directory, "Data.fs")],
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.directory,
                env=unmeasured(os.environ),  # ZEO's code only
            )
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
