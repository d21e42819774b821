"""A TCP proxy on loopback that can hold back a server's reply.

Forwards every byte between clients and a real server (memcached) in both
directions.  ``delay_next_reply(seconds)`` makes the proxy sit on the next
chunk the server sends (on any connection) for that long before passing it
on: the request was carried out, its answer comes late.  That is what a
client with a read timeout shorter than the delay meets as an "unknown
outcome".  ``reply_delay`` holds back every reply instead: a lock store a
network hop away (the benchmarks' ``--store-rtt-ms``).  Nothing about
memcached is simulated: the server is real.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class DelayProxy:
    """Listen on 127.0.0.1:<free port>, forward to 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream: int | str, reply_delay: float = 0.0) -> None:
        """``upstream``: a port on 127.0.0.1 or ``"127.0.0.1:port"``; ``reply_delay``: held back from every reply."""
        self.upstream_port = upstream if isinstance(upstream, int) else int(upstream.rpartition(":")[2])
        self.reply_delay = reply_delay
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._delay = 0.0
        self._delay_lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self.delayed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def delay_next_reply(self, seconds: float) -> None:
        with self._delay_lock:
            self._delay = seconds

    def _take_delay(self) -> float:
        if not self._delay:
            return 0.0
        with self._delay_lock:
            delay, self._delay = self._delay, 0.0
        return delay

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies:
                    delay = self._take_delay() or self.reply_delay
                    if delay:
                        self.delayed += 1
                        time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
