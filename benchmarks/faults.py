"""What each fault of the lock store costs, measured on real servers (docs/safety.rst, "What a store can forget").

Four measurements, each repeated ``--repeat`` times:

``note``      An exclusive writer (zlock policy ``always``) replaces a BTree on a
              real ZEO server; then the store forgets the lock's note (memcached
              restarted, or the note evicted by memory pressure on a 2 MB server
              without ``-o temporary_ttl``), or keeps it (the same pressure with
              ``-o temporary_ttl=3600``); then an optimistic commit (policy
              ``on-conflict``) whose view began before the writer's commit makes
              its entry.  Printed: its tries, the entries lost, its wall time.
``restart``   Holders right after a restart of memcached: one that finds neither
              gate counter nor note waits until the server has been up 2 s
              (``DRAIN_WAIT``) for commits that passed the gate before the
              restart; the next holder does not.  Printed: both acquisition
              times.
``servers``   Three memcached servers (memcached store, io and connect timeout
              0.3 s); one is killed, or stopped with SIGSTOP.  Printed: how long
              the first call for a key on it takes to fail (BackendUnavailable
              naming it), and an acquisition on the others.
``seam``      The fallback store: a process holds a key in memcached (3 s lease)
              and memcached is killed.  Printed: when another process gets the
              key (from the lock directory) and when the holder is told its lock
              is lost.

Usage: ``python benchmarks/faults.py [--repeat 3] [--only note,restart,servers,seam]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

import transaction  # noqa: E402
import ZEO  # noqa: E402
from BTrees.OOBTree import OOBTree  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from pymemcache.client.base import Client  # noqa: E402

from unimr.memcachedlock import Lock, lock_for_transaction, registry  # noqa: E402
from unimr.memcachedlock.errors import BackendUnavailable  # noqa: E402
from unimr.memcachedlock.keys import lock_name  # noqa: E402
from unimr.memcachedlock.tools.servers import MemcachedServer  # noqa: E402

from clients import in_another_client  # noqa: E402
from zeoserver import ZEOServer  # noqa: E402

KEY = "benchmark:faults"
MEASUREMENTS = ("note", "restart", "servers", "seam")


def use(servers: str, backend: str = "memcached", **settings: str) -> None:
    """Point this process's lock store at ``servers`` (the environment, as a site configures it)."""
    os.environ.update(MEMCACHEDLOCK_SERVERS=servers, MEMCACHEDLOCK_BACKEND=backend, **settings)
    registry.reset()


def note_present(server: MemcachedServer) -> bool:
    client = Client(("127.0.0.1", server.port), timeout=5)
    try:
        return client.get(("memcachedlock:" + lock_name(KEY) + "#note").encode("ascii")) is not None
    finally:
        client.close()


def optimistic_entry(zeo: ZEOServer, forget) -> tuple[int, int, float]:
    """(tries, entries lost, seconds without ``forget()``) of an optimistic commit whose view predates an
    exclusive writer's."""
    db = ZEO.DB(zeo.address)
    with db.transaction() as conn:
        conn.root()["site"] = PersistentMapping(tree=OOBTree({"a": 1}))

    def exclusive_writer(root) -> None:
        lock_for_transaction(KEY)
        root["site"]["tree"] = OOBTree({"a": 1})

    conn = db.open()
    tries = 0
    forgetting = 0.0
    started = time.monotonic()
    for attempt in transaction.manager.attempts(4):
        with attempt:
            tries += 1
            tree = conn.root()["site"]["tree"]
            tree["a"]
            if tries == 1:
                in_another_client(zeo.address, exclusive_writer)
                before = time.monotonic()
                forget()
                forgetting = time.monotonic() - before
            lock_for_transaction(KEY, policy="on-conflict")
            tree["y"] = 1
    elapsed = time.monotonic() - started - forgetting
    with db.transaction() as check:
        lost = 0 if "y" in check.root()["site"]["tree"] else 1
    conn.close()
    db.close()
    return tries, lost, elapsed


def measure_note(repeat: int) -> None:
    print("note forgotten between an exclusive writer's commit and an older optimistic commit (real ZEO):")
    print("  %-34s %10s %8s %6s %10s" % ("fault", "note kept", "tries", "lost", "wall ms"))
    cases = [("none (the note kept)", (), None), ("memcached restarted", (), "restart"),
             ("evicted (no temporary_ttl)", (), "fill"),
             ("pressure, -o temporary_ttl=3600", ("-o", "temporary_ttl=3600"), "fill")]
    for label, extra, fault in cases:
        for _ in range(repeat):
            with ZEOServer() as zeo, MemcachedServer(memory_mb=2, extra=extra) as server:
                use(server.address)
                time.sleep(2.5)  # a site's memcached has been up a while (see measure_restart)

                kept: list = []

                def forget(fault: str = fault, kept: list = kept) -> None:
                    if fault == "restart":
                        server.restart()
                    elif fault == "fill":
                        server.fill()
                    kept.append(note_present(server))

                tries, lost, elapsed = optimistic_entry(zeo, forget)
                print("  %-34s %10s %8d %6d %10.0f" % (label, "yes" if kept[0] else "no", tries, lost,
                                                       elapsed * 1000), flush=True)


def measure_restart(repeat: int) -> None:
    print("holders after a memcached restart (the gate counter and the note forgotten):")
    print("  %-34s %12s" % ("holder", "acquire ms"))
    for _ in range(repeat):
        with ZEOServer() as zeo, MemcachedServer() as server:
            use(server.address)
            db = ZEO.DB(zeo.address)
            conn = db.open()
            server.restart()
            for label in ("first after the restart", "next"):
                transaction.begin()
                conn.root()["x"] = 1
                started = time.monotonic()
                lock_for_transaction(KEY)
                print("  %-34s %12.0f" % (label, (time.monotonic() - started) * 1000), flush=True)
                transaction.commit()
            conn.close()
            db.close()


def key_on(backend, server: MemcachedServer) -> str:
    for n in range(1000):
        key = "doc-%d" % n
        if str(backend.server_for(lock_name(key))) == server.address:
            return key
    raise RuntimeError("no key maps to %s" % server.address)


def measure_servers(repeat: int) -> None:
    print("one of three memcached servers down (memcached store, io/connect timeout 0.3 s):")
    print("  %-10s %24s %28s" % ("fault", "its key fails after ms", "a key elsewhere acquires ms"))
    for fault in ("killed", "stopped"):
        for _ in range(repeat):
            servers = [MemcachedServer().start() for _ in range(3)]
            try:
                use(",".join(s.address for s in servers), MEMCACHEDLOCK_IO_TIMEOUT="0.3",
                    MEMCACHEDLOCK_CONNECT_TIMEOUT="0.3")
                backend = registry.get_backend()
                down, up = key_on(backend, servers[1]), key_on(backend, servers[0])
                warm = Lock(down)  # a connection to the server exists already, as on a running site
                assert warm.acquire(blocking=False)
                warm.release()
                servers[1].kill() if fault == "killed" else servers[1].stop()
                started = time.monotonic()
                try:
                    Lock(down).acquire(blocking=False)
                    failed = float("nan")
                except BackendUnavailable as exc:
                    assert servers[1].address in str(exc), exc
                    failed = time.monotonic() - started
                started = time.monotonic()
                other = Lock(up)
                assert other.acquire(blocking=False)
                elsewhere = time.monotonic() - started
                other.release()
                print("  %-10s %24.0f %28.1f" % (fault, failed * 1000, elsewhere * 1000), flush=True)
            finally:
                if fault == "stopped":
                    servers[1].cont()
                for server in servers:
                    server.kill()


HOLDER = r"""
import sys, time
from unimr.memcachedlock import Lock
lost = []
lock = Lock(sys.argv[1], timeout=3)
lock.on_lost = lambda *args: lost.append(time.time())
assert lock.acquire(timeout=5)
print(type(lock.lease).__name__, flush=True)
sys.stdin.readline()
end = time.time() + 6
while not lost and time.time() < end:
    time.sleep(0.01)
print(lost[0] if lost else "never", flush=True)
"""


def measure_seam(repeat: int) -> None:
    print("fallback store: memcached killed under a holder (3 s lease); another process waits for the key:")
    print("  %-24s %24s" % ("other process gets it s", "holder told it lost s"))
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as directory, MemcachedServer() as server:
            env = dict(os.environ, MEMCACHEDLOCK_SERVERS=server.address, MEMCACHEDLOCK_BACKEND="fallback",
                       MEMCACHEDLOCK_DIR=directory)
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, KEY], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert holder.stdout.readline().strip() == "MemcachedLease"
            use(server.address, "fallback", MEMCACHEDLOCK_DIR=directory)
            killed = time.time()
            server.kill()
            holder.stdin.write("go\n")
            holder.stdin.flush()
            taker = Lock(KEY, timeout=3)
            assert taker.acquire(timeout=10)
            got = time.time() - killed
            taker.release()
            told = holder.stdout.readline().strip()
            holder.wait(10)
            print("  %-24.2f %24s" % (got, "%.2f" % (float(told) - killed) if told != "never" else "never"),
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(MEASUREMENTS))
    args = parser.parse_args(argv)
    chosen = [name for name in args.only.split(",") if name]
    for name in chosen:
        if name not in MEASUREMENTS:
            parser.error("unknown measurement %r: use %s" % (name, ", ".join(MEASUREMENTS)))
    for name in chosen:
        globals()["measure_" + name](args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
