"""What looking up the lock store costs a lock: the environment's store vs a registered ILockBackend utility.

    .venv/bin/python benchmarks/store_lookup.py [-n 200000] [--cycles 2000] [--rounds 5]

Starts a private memcached on a free loopback port.  Prints, for the store
built from the environment and then for the same kind of store registered as
the ``ILockBackend`` utility (as ``<memcachedlock:store>`` does), the best
round's time of ``registry.get_backend()`` (every acquisition calls it) and of
an uncontended ``Lock`` acquire+release.  The two should not differ: the
registered store is cached, not looked up in the component registry per call.
"""

from __future__ import annotations

import argparse
import os
import timeit

from unimr.memcachedlock import registry
from unimr.memcachedlock.tools.servers import MemcachedServer


def measure(label: str, lookups: int, cycles: int, rounds: int) -> None:
    from unimr.memcachedlock import Lock

    registry.get_backend()
    lookup = min(timeit.repeat(registry.get_backend, number=lookups, repeat=rounds)) / lookups
    lock = Lock("store-lookup-bench")

    def cycle() -> None:
        lock.acquire()
        lock.release()

    for _ in range(200):
        cycle()
    locked = min(timeit.repeat(cycle, number=cycles, repeat=rounds)) / cycles
    print("%-20s get_backend %5.0f ns   acquire+release %5.0f us" % (label, lookup * 1e9, locked * 1e6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200000, help="get_backend calls per round")
    parser.add_argument("--cycles", type=int, default=2000, help="acquire+release cycles per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with MemcachedServer() as server:
        os.environ.update(MEMCACHEDLOCK_SERVERS=server.address, MEMCACHEDLOCK_BACKEND="memcached")
        from zope.component import getGlobalSiteManager

        from unimr.memcachedlock import config
        from unimr.memcachedlock.interfaces import ILockBackend
        from unimr.memcachedlock.registry import make_backend

        measure("environment store", args.n, args.cycles, args.rounds)
        getGlobalSiteManager().registerUtility(make_backend(config.get_settings()), ILockBackend)
        measure("registered utility", args.n, args.cycles, args.rounds)


if __name__ == "__main__":
    main()
