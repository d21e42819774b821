"""A lean, thread-safe pool of pymemcache ``Client`` connections to one server.

pymemcache's ``PooledClient`` takes a lock and enters a context manager on
every call; on the lock's hot path (one ``add`` to acquire, ``gets`` and
``cas`` to release) that overhead was a measurable part of the cost.  Here
a thread takes an idle client with ``list.pop()`` and puts it back with
``list.append()``, both atomic under the GIL, so no lock is needed: each
client is used by one thread at a time.  A client whose call raised is
closed, never reused (its connection may hold half an answer).  A forked
child forgets the parent's connections.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from pymemcache.client.base import Client

#: Idle connections kept per server; more threads than this reconnect when they come back.
MAX_IDLE = 64

_pools: "weakref.WeakSet[ClientPool]" = weakref.WeakSet()


class ClientPool:
    """The subset of pymemcache's client API the lock store uses, safe across threads."""

    def __init__(self, server: tuple[str, int] | str, max_idle: int = MAX_IDLE, **client_kw: Any) -> None:
        self.server = server
        self.max_idle = max_idle
        self.client_kw = client_kw
        self._idle: list[Client] = []
        _pools.add(self)

    @property
    def default_noreply(self) -> bool:
        return self.client_kw.get("default_noreply", True)

    @property
    def connect_timeout(self) -> float | None:
        return self.client_kw.get("connect_timeout")

    @property
    def timeout(self) -> float | None:
        return self.client_kw.get("timeout")

    def _new(self) -> Client:
        return Client(self.server, **self.client_kw)

    def _run(self, method: str, args: tuple, kw: dict) -> Any:
        try:
            client = self._idle.pop()
        except IndexError:
            client = self._new()
        try:
            result = getattr(client, method)(*args, **kw)
        except BaseException:
            client.close()
            raise
        if len(self._idle) < self.max_idle:
            self._idle.append(client)
        else:
            client.close()
        return result

    def add(self, *args: Any, **kw: Any) -> Any:
        return self._run("add", args, kw)

    def set(self, *args: Any, **kw: Any) -> Any:
        return self._run("set", args, kw)

    def cas(self, *args: Any, **kw: Any) -> Any:
        return self._run("cas", args, kw)

    def get(self, *args: Any, **kw: Any) -> Any:
        return self._run("get", args, kw)

    def gets(self, *args: Any, **kw: Any) -> Any:
        return self._run("gets", args, kw)

    def get_many(self, *args: Any, **kw: Any) -> Any:
        return self._run("get_many", args, kw)

    def gets_many(self, *args: Any, **kw: Any) -> Any:
        return self._run("gets_many", args, kw)

    def delete(self, *args: Any, **kw: Any) -> Any:
        return self._run("delete", args, kw)

    def touch(self, *args: Any, **kw: Any) -> Any:
        return self._run("touch", args, kw)

    def version(self) -> Any:
        return self._run("version", (), {})

    def close(self) -> None:
        """Close the idle connections (clients in use are closed when they come back over the limit)."""
        idle, self._idle = self._idle, []
        for client in idle:
            client.close()

    def _forget(self) -> None:
        """In a forked child: drop the parent's connections without talking on them."""
        self._idle = []


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
