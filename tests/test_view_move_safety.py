"""The view move never commits what plain ZODB would refuse (docs/zlock.rst, "What the move can see").

Two real ZEO clients of one real ZEO server, memcached as the lock store.
Client A begins and reads a counter in one of the ways code can read ZODB
state; client B commits an increment under the same zlock key; then A writes
the value it read plus one.  Every read pattern runs twice: with plain ZODB
(no lock), which refuses A's write with a ConflictError at commit, and with
zlock, which must refuse it too -- LockBusy before the write, or a
ConflictError at commit -- and never commit the stale value.  Each try re-runs
the whole pattern, and the counter must end at 2 both ways.

The last tests run 4 client processes x 50 increments of one counter per
read style: the count must be exactly 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import transaction
import ZEO
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from transaction.interfaces import NoTransaction
from ZODB.POSException import ConflictError

from unimr.memcachedlock import metrics
from unimr.memcachedlock.zodb import LockBusy, lock_for_transaction, zlock

from clients import in_another_client, run_clients
from counters import Counter, ZopeCounter
from servers import measured_after_start

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "view-move-safety"

MAKERS: dict[str, Callable[[], Any]] = {
    "counter": Counter,
    "zope": ZopeCounter,
    "mapping": lambda: PersistentMapping(n=0),
    "btree": lambda: OOBTree({"n": 0}),
    "length": Length,
}


def get(obj: Any) -> int:
    """The counter's value, read the ordinary way."""
    if isinstance(obj, (Counter, ZopeCounter)):
        return obj.n
    if isinstance(obj, Length):
        return obj()
    return obj["n"]


def put(obj: Any, value: int) -> None:
    if isinstance(obj, (Counter, ZopeCounter)):
        obj.n = value
    elif isinstance(obj, Length):
        obj.set(value)
    else:
        obj["n"] = value


def locked_writer(move_view: bool) -> Callable[[Callable[[], None]], None]:
    """A zlocked function that runs ``write``; both kinds share one lock (same module, name and key)."""
    @zlock(lambda fun, write: KEY, move_view=move_view)
    def zlocked(write: Callable[[], None]) -> None:
        write()

    return zlocked


zlocked = locked_writer(move_view=True)
zlocked_without_move = locked_writer(move_view=False)
#: The lock's name in metrics.snapshot() (its ``module.qualname``), and the key the decorators lock.
METRICS_NAME = "%s.locked_writer.%%3Clocals%%3E.zlocked" % __name__
LOCK_KEY = "%s.locked_writer.<locals>.zlocked:%s" % (__name__, KEY)


def plain(write: Callable[[], None]) -> None:
    write()


RUNNERS = {"plain": plain, "zlock": zlocked, "zlock move_view=False": zlocked_without_move}


def b_increments(address: tuple[str, int], name: str, runner: Callable | None = None) -> None:
    """Client B commits one increment of ``name`` under the lock (its own ZEO client, in a thread)."""
    def work(root) -> None:
        counter = root[name]
        (runner or zlocked)(lambda: put(counter, get(counter) + 1))

    in_another_client(address, work)


class ClientA:
    """Client A: a ZEO client whose connection zlock has already watched for a transaction.

    With ``zope_order`` the connection is opened after ``transaction.begin()``
    and closed after the transaction, as Zope's publisher does.
    """

    def __init__(self, address: tuple[str, int], zope_order: bool = False) -> None:
        self.db = ZEO.DB(address)
        self.zope_order = zope_order
        self.conn = None if zope_order else self.db.open()

    def begin(self) -> None:
        transaction.begin()
        if self.zope_order:
            self.conn = self.db.open()

    def end(self) -> None:
        with contextlib.suppress(NoTransaction):  # explicit transactions: none was begun
            transaction.abort()
        if self.zope_order and self.conn is not None:
            self.conn.close()
            self.conn = None

    def obj(self, name: str) -> Any:
        return self.conn.root()[name]

    def between_transactions(self) -> None:
        """End the transaction (committing what it changed) and begin the next one on the same connection."""
        transaction.commit()
        transaction.begin()

    def close(self) -> None:
        self.end()
        if self.conn is not None:
            self.conn.close()
        self.db.close()


@pytest.fixture
def scene(memcached, zeo_server):
    """The counters in a fresh database; yields a factory of warmed-up clients A."""
    metrics.reset()
    db = ZEO.DB(zeo_server.address)
    with db.transaction() as conn:
        root = conn.root()
        for kind, make in MAKERS.items():
            root[kind] = make()
        root["other"] = Counter()
    db.close()
    clients: list[ClientA] = []

    def client_a(zope_order: bool = False) -> ClientA:
        a = ClientA(zeo_server.address, zope_order)
        for _ in range(2):  # zlock watches the connection from its second transaction on
            a.begin()
            for kind in MAKERS:
                get(a.obj(kind))  # every counter loaded: in memory from an earlier transaction
            zlocked(lambda: None)
            transaction.commit()
            a.end()
        clients.append(a)
        return a

    yield client_a
    for a in clients:
        a.close()


def read_dict(a: ClientA, name: str) -> int:
    obj = a.obj(name)
    obj._p_activate()
    return obj.__dict__["n"]


def read_getattribute(a: ClientA, name: str) -> int:
    obj = a.obj(name)
    obj._p_activate()
    return object.__getattribute__(obj, "n")


def read_vars(a: ClientA, name: str) -> int:
    obj = a.obj(name)
    obj._p_activate()
    return vars(obj)["n"]


def read_mapping_data(a: ClientA, name: str) -> int:
    mapping = a.obj(name)
    mapping._p_activate()
    return mapping.__dict__["data"]["n"]


def read_mapping_data_kept(a: ClientA, name: str) -> int:
    """The mapping's ``data`` dict taken in the previous transaction, read in this one."""
    data = a.obj(name).data
    a.between_transactions()
    return data["n"]


def rollback_joined_after(a: ClientA, name: str) -> int:
    """Read, savepoint, change, roll back: the connection joined after the savepoint."""
    obj = a.obj(name)
    seen = get(obj)
    savepoint = transaction.savepoint()
    put(obj, 99)
    savepoint.rollback()
    return seen


def rollback_joined_before(a: ClientA, name: str) -> int:
    """The same with the connection joined before the savepoint (its own rollback)."""
    a.obj("other").n += 1
    return rollback_joined_after(a, name)


def kept_in_local(a: ClientA, name: str) -> int:
    """A value read in the previous transaction and kept in a local variable."""
    seen = get(a.obj(name))
    a.between_transactions()
    return seen


def kept_in_volatile(a: ClientA, name: str) -> int:
    """A value read in the previous transaction and kept in a ``_v_`` attribute of another object."""
    a.obj("other")._v_seen = get(a.obj(name))
    a.between_transactions()
    return a.obj("other")._v_seen


def deactivated_after_dict(a: ClientA, name: str) -> int:
    """Read through ``__dict__``, then made a ghost by the code itself."""
    seen = read_dict(a, name)
    a.obj(name)._p_deactivate()
    return seen


COLLECTED: list[bool] = []


def collected_after_dict(a: ClientA, name: str) -> int:
    """Read through ``__dict__``, then ghostified by the cache's garbage collection (a small cache)."""
    seen = read_dict(a, name)
    cache = a.conn._cache
    size = cache.cache_size
    cache.cache_size = 3
    try:
        a.conn.cacheGC()
    finally:
        cache.cache_size = size
    COLLECTED.append(a.obj(name)._p_changed is None)  # on a first try the GC takes it (a retry loads it anew)
    return seen


def run_pattern(a: ClientA, address: tuple[str, int], name: str, read: Callable[[ClientA, str], int],
                runner: Callable, b_runner: Callable | None = None) -> list[str]:
    """Up to four tries of: read, (B commits, first try only), write read+1 with ``runner``, commit."""
    outcomes = []
    for attempt in range(4):
        a.begin()
        try:
            seen = read(a, name)
            if attempt == 0:
                b_increments(address, name, b_runner)
            obj = a.obj(name)
            runner(lambda obj=obj, seen=seen: put(obj, seen + 1))
            transaction.commit()
            outcomes.append("committed")
            return outcomes
        except ConflictError as exc:
            outcomes.append("LockBusy" if isinstance(exc, LockBusy) else "ConflictError")
        finally:
            a.end()
    return outcomes


def final(address: tuple[str, int], name: str) -> int:
    db = ZEO.DB(address)
    try:
        with db.transaction() as conn:
            return get(conn.root()[name])
    finally:
        db.close()


PATTERNS = [
    ("counter", read_dict),
    ("counter", read_getattribute),
    ("counter", read_vars),
    ("zope", read_dict),
    ("mapping", read_mapping_data),
    ("mapping", read_mapping_data_kept),
    ("counter", rollback_joined_after),
    ("counter", rollback_joined_before),
    ("btree", rollback_joined_after),
    ("btree", rollback_joined_before),
    ("length", rollback_joined_after),
    ("length", rollback_joined_before),
    ("counter", kept_in_local),
    ("counter", kept_in_volatile),
    ("counter", deactivated_after_dict),
    ("counter", collected_after_dict),
]


@pytest.mark.parametrize("mode", ["plain", "zlock"])
@pytest.mark.parametrize("name,read", PATTERNS, ids=["%s-%s" % (n, r.__name__) for n, r in PATTERNS])
def test_a_stale_read_is_refused_as_plain_zodb_refuses_it(scene, zeo_server, name, read, mode):
    a = scene()
    COLLECTED.clear()
    outcomes = run_pattern(a, zeo_server.address, name, read, RUNNERS[mode])
    assert read is not collected_after_dict or COLLECTED[0]
    if mode == "zlock":
        assert outcomes[0] in ("LockBusy", "ConflictError"), outcomes
    elif name != "length":  # plain ZODB merges concurrent changes of a Length (its conflict resolution)
        assert outcomes[0] == "ConflictError", outcomes
    assert outcomes[-1] == "committed", outcomes
    assert final(zeo_server.address, name) == 2  # B's increment and A's, none lost


@pytest.mark.parametrize("mode", ["plain", "zlock"])
def test_zope_order_with_a_dict_read_is_refused(scene, zeo_server, mode):
    """The connection opened after ``transaction.begin()``, as in Zope, and the counter read through ``__dict__``."""
    a = scene(zope_order=True)
    outcomes = run_pattern(a, zeo_server.address, "counter", read_dict, RUNNERS[mode])
    assert outcomes[0] in ("LockBusy", "ConflictError") and outcomes[-1] == "committed", outcomes
    assert final(zeo_server.address, "counter") == 2


def length_dict(a: ClientA, name: str) -> int:
    obj = a.obj(name)
    obj._p_activate()
    return obj.__dict__["value"]


def btree_deactivated(a: ClientA, name: str) -> int:
    seen = get(a.obj(name))
    a.obj(name)._p_deactivate()
    return seen


RESIDUE = [("length", length_dict), ("btree", btree_deactivated), ("btree", kept_in_local)]


@pytest.mark.parametrize("name,read", RESIDUE, ids=["%s-%s" % (n, r.__name__) for n, r in RESIDUE])
def test_what_the_move_cannot_see_is_refused_with_the_move_switched_off(scene, zeo_server, name, read):
    """The reads docs/zlock.rst lists as unseen by the move: ``move_view=False`` turns each into a retry."""
    a = scene()
    outcomes = run_pattern(a, zeo_server.address, name, read, zlocked_without_move)
    assert outcomes == ["LockBusy", "committed"]
    assert final(zeo_server.address, name) == 2


def lock_for_transaction_without_move(write: Callable[[], None]) -> None:
    """``lock_for_transaction`` on the decorators' lock, with the move switched off."""
    assert lock_for_transaction(LOCK_KEY, move_view=False)
    write()


def test_lock_for_transaction_can_switch_the_move_off(scene, zeo_server):
    a = scene()
    outcomes = run_pattern(a, zeo_server.address, "length", length_dict, lock_for_transaction_without_move)
    assert outcomes == ["LockBusy", "committed"]
    assert final(zeo_server.address, "length") == 2


@pytest.mark.parametrize("move_view", ["true", "false"])
def test_the_zcml_directive_can_switch_the_move_off(scene, zeo_server, move_view):
    """``<memcachedlock:lock ... move_view="false"/>``: the residue read becomes a retry (with "true", a move)."""
    from zope.configuration import xmlconfig
    from zope.testing.cleanup import cleanUp

    from counters import Writer

    cleanUp()
    try:
        xmlconfig.string("""<configure xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">
          <include package="unimr.memcachedlock" file="meta.zcml" />
          <memcachedlock:lock class="counters.Writer" method="write" key="counters.writer_key"
                              move_view="%s" />
        </configure>""" % move_view)
        a = scene()
        writer = Writer()
        with transaction.manager:
            writer.write(lambda: get(a.obj("btree")))  # the thread's views are watched from now on
        if move_view == "false":
            outcomes = run_pattern(a, zeo_server.address, "length", length_dict, writer.write, writer.write)
            assert outcomes == ["LockBusy", "committed"]
            assert final(zeo_server.address, "length") == 2
        else:
            assert keep_moving(a, zeo_server.address, "btree", lambda a: None, writer.write) == 1
    finally:
        cleanUp()


def moves(runner: Callable | None = None) -> int:
    """Views moved so far under the decorators' lock (or, given ``runner``, the ZCML-locked writer's)."""
    data = metrics.snapshot().get("counters.Writer.write" if runner else METRICS_NAME, {})
    return int(data.get("view_moves", 0))


def unrelated_read(a: ClientA, name: str) -> int:
    """Nothing of the counter read before the lock: the value is read under it."""
    get(a.obj("other"))
    return -1


def keep_moving(a: ClientA, address: tuple[str, int], name: str, before: Callable[[ClientA], None],
                runner: Callable | None = None) -> int:
    """A reads other things, B commits, A increments the counter under the lock: the number of moves."""
    start = moves(runner)
    a.begin()
    try:
        before(a)
        b_increments(address, name, runner)
        obj = a.obj(name)
        (runner or zlocked)(lambda: put(obj, get(obj) + 1))
        transaction.commit()
    finally:
        a.end()
    return moves(runner) - start


def write_skew(a: ClientA) -> None:
    """Another object read by attribute and written, not changed by B."""
    a.obj("other").n = a.obj("other").n + 1


def cache_gc(a: ClientA) -> None:
    cache = a.conn._cache
    size = cache.cache_size
    cache.cache_size = 3
    try:
        a.conn.cacheGC()
    finally:
        cache.cache_size = size


def savepoint_kept(a: ClientA) -> None:
    a.obj("other").n += 1
    transaction.savepoint()


def read_current_of_another(a: ClientA) -> None:
    a.conn.readCurrent(a.obj("other"))


@pytest.mark.parametrize("name", ["btree", "length"])
@pytest.mark.parametrize("before", [unrelated_read, write_skew, cache_gc, savepoint_kept, read_current_of_another])
def test_the_move_still_happens_where_nothing_changed_was_seen(scene, zeo_server, name, before):
    """BTrees and Lengths in memory, not used before the lock: the view moves, and nothing is lost."""
    a = scene()
    assert keep_moving(a, zeo_server.address, name, lambda a: before(a) if before is not unrelated_read
                       else unrelated_read(a, name)) == 1
    assert final(zeo_server.address, name) == 2


# ---- 4 client processes x 50 increments ---------------------------------------------------------------

STYLES = ["attribute", "dict", "rollback", "volatile", "btree under the lock"]


def _increment(conn, style: str) -> None:
    """One locked increment of the counter, its value read before the lock in ``style``."""
    if style == "btree under the lock":  # the catalog's way: nothing read before the lock, views move
        tree = conn.root()["tree"]
        zlocked(lambda: tree.__setitem__("n", tree["n"] + 1))
        return
    counter = conn.root()["counter"]
    if style == "attribute":
        seen = counter.n
    elif style == "dict":
        counter._p_activate()
        seen = counter.__dict__["n"]
    elif style == "rollback":
        seen = counter.n
        savepoint = transaction.savepoint()
        counter.n = -1
        savepoint.rollback()
    else:  # a value kept from an earlier transaction in the counter's own _v_ attribute (ZODB drops it
        # when the counter is invalidated), read without the cache seeing it
        counter._p_activate()
        seen = counter.__dict__.get("_v_seen", counter.__dict__["n"])
    zlocked(lambda: setattr(counter, "n", seen + 1))
    counter._v_seen = seen + 1


def _worker(port: int, style: str, count: int) -> dict:
    from unimr.memcachedlock import metrics as worker_metrics

    db = ZEO.DB(("127.0.0.1", port))
    conn = db.open()
    stats = {"busy": 0, "conflicts": 0}
    with transaction.manager:
        zlocked(lambda: None)  # the connection's first view: zlock starts watching
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(count):
        for attempt in transaction.manager.attempts(100):
            with attempt:
                try:
                    _increment(conn, style)
                except LockBusy:
                    stats["busy"] += 1
                    raise
    data = worker_metrics.snapshot().get(METRICS_NAME, {})
    stats["moves"] = int(data.get("view_moves", 0))
    conn.close()
    db.close()
    return stats


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_four_processes_lose_no_increment(memcached, zeo_server, style):
    db = ZEO.DB(zeo_server.address)
    with db.transaction() as conn:
        conn.root()["counter"] = Counter()
        conn.root()["tree"] = OOBTree({"n": 0})
    db.close()
    env = dict(measured_after_start(os.environ), MEMCACHEDLOCK_SERVERS=memcached.address,
               MEMCACHEDLOCK_BACKEND="memcached")
    reports = run_clients([[os.path.abspath(__file__), str(zeo_server.port), style, "50"]] * 4, env)
    assert final(zeo_server.address, "tree" if style == "btree under the lock" else "counter") == 200, reports
    if style == "btree under the lock":
        assert sum(report["moves"] for report in reports) > 0, reports


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    from servers import measure_from_here

    measure_from_here()
    print(json.dumps(_worker(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))), flush=True)


def locked_on(key: str) -> Callable[[Callable[[], None]], None]:
    """A zlocked runner of its own key (a second lock in the same transaction)."""
    @zlock(lambda fun, write: key)
    def on_key(write: Callable[[], None]) -> None:
        write()

    return on_key


def test_a_rollback_is_remembered_after_a_move(scene, zeo_server):
    """Read, change and roll back a Length; a first lock moves the view past an unrelated commit; a second
    lock finds the Length changed since: the read before the rollback still counts (a retry)."""
    first, second = locked_on("first"), locked_on("second")
    a = scene()
    a.begin()
    try:
        with transaction.manager:  # both keys have notes (first transactions of a key cannot tell)
            first(lambda: None)
            second(lambda: None)
        a.begin()
        seen = rollback_joined_after(a, "length")
        in_another_client(zeo_server.address, lambda root: first(lambda: put(root["btree"], 5)))
        first(lambda: None)                      # moved: the BTree changed, nothing seen of it
        in_another_client(zeo_server.address, lambda root: second(lambda: put(root["length"], 7)))
        with pytest.raises(LockBusy, match="used before the lock"):
            second(lambda: put(a.obj("length"), seen + 1))
    finally:
        a.end()


def all_moves() -> int:
    return sum(int(data.get("view_moves", 0)) for data in metrics.snapshot().values())


@pytest.mark.parametrize("shape", ["another zlock first", "nested zlocks", "explicit transactions"])
def test_the_move_still_happens_with_several_zlocks_and_explicit_transactions(scene, zeo_server, shape):
    """A BTree counter not read before the lock: one view move, no retry, nothing lost."""
    outer = locked_on("outer")
    with transaction.manager:  # the outer key has a note
        outer(lambda: None)
    explicit = shape == "explicit transactions"
    transaction.manager.explicit = explicit
    try:
        a = scene()
        before = all_moves()
        a.begin()
        if shape == "another zlock first":
            outer(lambda: None)
        b_increments(zeo_server.address, "btree")
        tree = a.obj("btree")
        increment = lambda: put(tree, get(tree) + 1)  # noqa: E731
        if shape == "nested zlocks":
            outer(lambda: zlocked(increment))
        else:
            zlocked(increment)
        transaction.commit()
        a.end()
    finally:
        transaction.manager.explicit = False
    assert all_moves() - before == 1
    assert final(zeo_server.address, "btree") == 2


def test_the_move_still_happens_with_two_databases(scene, zeo_server):
    """A transaction that also writes a local database of its own: both views move together."""
    import ZODB
    from ZODB.MappingStorage import MappingStorage

    scene()  # the counters, in the ZEO server's database
    databases: dict = {}
    db = ZODB.DB(ZEO.client(zeo_server.address), databases=databases, database_name="main")
    ZODB.DB(MappingStorage(), databases=databases, database_name="temp")
    conn = db.open()
    try:
        for _ in range(2):  # zlock watches the connections from their second transaction on
            with transaction.manager:
                conn.get_connection("temp").root()["seen"] = get(conn.root()["btree"])
                zlocked(lambda: None)
        before = all_moves()
        transaction.begin()
        conn.get_connection("temp").root()["seen"] = -1
        b_increments(zeo_server.address, "btree")
        tree = conn.root()["btree"]
        zlocked(lambda: put(tree, get(tree) + 1))
        transaction.commit()
        assert all_moves() - before == 1
    finally:
        transaction.abort()
        conn.close()
        for each in databases.values():
            each.close()
    assert final(zeo_server.address, "btree") == 2
