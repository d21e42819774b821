"""A lock store a network hop away: ``tests/delay_proxy.py`` in a process of its own, at a raised priority.

Every reply of the server reaches the client ``delay`` seconds late (its
requests go through at once), which models a round trip of ``delay`` to a
memcached on another host.  A network adds that latency without taking
CPU from the clients; a proxy on the same 2 cores does take some, so it
runs in its own process, niced to -10 where it may be (as root), so that
its forwarding waits as little as possible behind the benchmark's clients.

    python benchmarks/rtt_proxy.py 127.0.0.1:11211 0.0003    # prints the port it listens on
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
#: Niceness of the proxy process (root only; others keep the default).
PRIORITY = -10


class RttProxy:
    """The proxy in a process of its own, in front of ``upstream`` (``host:port``); ``address`` is where it listens."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), upstream, repr(delay)],
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError("the delaying proxy did not start (exit %s)" % self.process.poll())
        self.address = "127.0.0.1:%s" % line.strip()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> RttProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    sys.path.insert(0, TESTS)
    from delay_proxy import DelayProxy

    if os.geteuid() == 0:
        os.nice(PRIORITY)
    proxy = DelayProxy(argv[0], reply_delay=float(argv[1]))
    print(proxy.port, flush=True)
    try:
        signal.pause()  # until killed
    finally:
        proxy.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
