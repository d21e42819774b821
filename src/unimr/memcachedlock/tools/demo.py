"""``memcachedlock demo``: what the package is for, measured on this machine.

The demo starts a real ZEO server on a temporary FileStorage and K client
processes.  Every client commits N writes to one hot object; each write runs
W milliseconds of CPU work first (standing for cataloging, rendering...) and
is retried by ``transaction.manager.attempts()`` on a ConflictError.  It runs
twice: without a lock, where most of the work is thrown away by conflicts,
and with ``zlock``, where the clients take turns before the work.  The table
at the end counts commits, conflicts, zlock's cheap retries, the work wasted
(executions minus commits) and the wall time of both runs.

The lock store is chosen as a site would: the memcached servers named by
``MEMCACHEDLOCK_SERVERS`` when they answer, otherwise a private memcached on
a free loopback port when the ``memcached`` binary is on PATH, otherwise the
file store (flock in a temporary lock directory), the embedded default.

Everything the demo starts (ZEO, memcached, clients, the temporary directory)
is stopped and removed when it ends, also on Ctrl-C, SIGTERM or an error.
Clients run as ``python -c`` of :func:`worker_main` and talk JSON lines over
their stdout; they exit when their stdin closes, so a demo killed with
SIGKILL leaves no client behind either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn, Protocol

from ..config import ServerAddress
from .servers import free_port

logger = logging.getLogger(__name__)

DEFAULT_CLIENTS = 4
DEFAULT_WRITES = 15
DEFAULT_WORK_MS = 20.0
DEFAULT_TIMEOUT = 120.0
#: Attempts per write before a client gives up (transaction.manager.attempts).
MAX_ATTEMPTS = 500
MODES = ("nolock", "zlock")
MODE_TITLES = {"nolock": "no lock", "zlock": "zlock"}
STORE_CHOICES = ("auto", "memcached", "file")


class DemoError(Exception):
    """The demo could not run; the message says why in one line."""


@dataclasses.dataclass
class PhaseResult:
    """The figures of one run (all clients, one mode)."""

    mode: str
    clients: int
    writes: int
    work_ms: float
    commits: int = 0
    executions: int = 0
    attempts: int = 0
    conflicts: int = 0
    busy: int = 0
    wall: float = 0.0
    final_count: int = 0

    @property
    def expected(self) -> int:
        return self.clients * self.writes

    @property
    def wasted(self) -> int:
        """Executions of the work whose result was thrown away."""
        return self.executions - self.commits

    @property
    def wasted_per_commit(self) -> float:
        return self.wasted / self.commits if self.commits else 0.0

    @property
    def nothing_lost(self) -> bool:
        return self.final_count == self.expected == self.commits

    def as_dict(self) -> dict[str, str | float]:
        data: dict[str, str | float] = dataclasses.asdict(self)
        data.update(
            expected=self.expected,
            wasted=self.wasted,
            wasted_per_commit=round(self.wasted_per_commit, 3),
            nothing_lost=self.nothing_lost,
            wall=round(self.wall, 3),
        )
        return data


# --------------------------------------------------------------------------- client side


def burn(work_ms: float) -> None:
    """Spend ``work_ms`` milliseconds of this thread's CPU time (the expensive work)."""
    end = time.thread_time() + work_ms / 1000.0
    while time.thread_time() < end:
        pass


class _Counts:
    executions = 0


class _Root(Protocol):
    """The database root as the clients use it: hot objects by name, each a mapping with its count."""

    def __getitem__(self, name: str) -> MutableMapping[str, int]: ...


def _update(root: _Root, name: str, lock_key: str, work_ms: float, counts: _Counts) -> None:
    """One write to the hot object: read it, do the work, write the result."""
    counts.executions += 1
    hot = root[name]
    value = hot["count"]
    burn(work_ms)
    hot["count"] = value + 1


def _lock_key(fun: Callable[[_Root, str, str, float, _Counts], None], root: _Root, name: str, lock_key: str,
              *args: float | _Counts) -> str:
    return lock_key


def _exit_when_parent_goes(stdin: IO[str]) -> None:
    """Leave at once when the parent closes our stdin (it ended, or was killed)."""
    for _ in stdin:
        pass
    os._exit(3)


def worker_main(argv: Sequence[str]) -> int:
    """One demo client: ``--zeo PORT --mode nolock|zlock --writes N --work MS --name OBJ --key KEY``.

    Prints ``{"ready": ...}``, waits for ``go`` on stdin, then one JSON line
    per commit and ``{"done": ...}`` at the end.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="memcachedlock-demo-client")
    parser.add_argument("--zeo", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--writes", type=int, required=True)
    parser.add_argument("--work", type=float, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)

    import transaction
    import ZEO
    from ZODB.POSException import ConflictError

    from ..zodb import LockBusy, zlock

    update = _update
    if args.mode == "zlock":
        update = zlock(_lock_key, timeout=30, interval=0.05)(_update)

    def emit(**data: int | dict[str, int]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    db = ZEO.DB(("127.0.0.1", args.zeo))
    counts = _Counts()
    attempts = busy = commits = 0
    try:
        conn = db.open()
        emit(ready=os.getpid())
        if sys.stdin.readline().strip() != "go":
            return 3
        threading.Thread(target=_exit_when_parent_goes, args=(sys.stdin,), daemon=True).start()
        manager = transaction.manager
        for _ in range(args.writes):
            for attempt in manager.attempts(MAX_ATTEMPTS):
                with attempt:
                    attempts += 1
                    try:
                        update(conn.root(), args.name, args.key, args.work, counts)
                    except ConflictError as exc:
                        if isinstance(exc, LockBusy):
                            busy += 1
                        raise
            commits += 1
            emit(commit=commits, attempts=attempts, busy=busy, executions=counts.executions)
        conn.close()
    finally:
        db.close()
    emit(done=dict(commits=commits, attempts=attempts, busy=busy, executions=counts.executions))
    return 0


# --------------------------------------------------------------------------- parent side


def _die_with_parent() -> None:
    """In a server child: get SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def memcached_version(address: ServerAddress, timeout: float = 1.0) -> str | None:
    """The server's version if something answers as memcached at ``address``."""
    from ..backends.memcached import server_command

    try:
        text = server_command(address, b"version", timeout).strip()
    except OSError:
        return None
    return text[8:] if text.startswith("VERSION ") else None


@dataclasses.dataclass
class LockStore:
    """The store the demo's clients use: its kind, the environment to give them, a description."""

    kind: str
    env: dict[str, str]
    description: str


@dataclasses.dataclass
class DemoSize:
    """How big a demo run is: K clients, N writes each, W ms of work per write, and its time limit."""

    clients: int
    writes: int
    work_ms: float
    timeout: float = DEFAULT_TIMEOUT

    @property
    def commits(self) -> int:
        return self.clients * self.writes


def _add_counts(result: PhaseResult, state: list[dict[str, int]]) -> None:
    """Sum the clients' figures into ``result``; conflicts are the attempts neither committed nor busy."""
    for counts in state:
        for field in ("commits", "attempts", "busy", "executions"):
            setattr(result, field, getattr(result, field) + counts[field])
    result.conflicts = result.attempts - result.commits - result.busy


class Progress:
    """What the person watching sees: plain lines, and one live status line on a terminal."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self._live_line = False

    @property
    def period(self) -> float:
        """Seconds between two status lines: a terminal's line is rewritten, a log gets one a second."""
        return 0.1 if self.stream and self.stream.isatty() else 1.0

    def say(self, text: str) -> None:
        if self.stream is None:
            return
        if self._live_line:
            self.stream.write("\n")
            self._live_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, text: str, final: bool = False) -> None:
        """The status line: rewritten in place on a terminal (``final`` ends it), a new line elsewhere."""
        if self.stream is None:
            return
        if self.stream.isatty():
            self.stream.write("\r" + text + "\033[K")
            self._live_line = not final
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


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
    from ..config import parse_servers

    env = os.environ if environ is None else environ
    if choice == "file":
        return _file_store(workspace, " (--backend file)")
    reasons = []
    configured = env.get("MEMCACHEDLOCK_SERVERS", "").strip()
    if configured:
        servers = parse_servers(configured)
        down = [s for s in servers if memcached_version(s) is None]
        if not down:
            return LockStore(
                "memcached",
                {"MEMCACHEDLOCK_BACKEND": "memcached", "MEMCACHEDLOCK_SERVERS": configured,
                 "MEMCACHEDLOCK_PREFIX": env.get("MEMCACHEDLOCK_PREFIX", "memcachedlock:")},
                "memcached %s (MEMCACHEDLOCK_SERVERS)" % configured,
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


# -- one run


class PhaseRun:
    """One run: releases the clients of one mode together and collects their JSON lines."""

    def __init__(self, size: DemoSize, mode: str, workers: list[subprocess.Popen[bytes]], progress: Progress,
                 failure: Callable[[subprocess.Popen[bytes]], str]) -> None:
        self.size, self.mode, self.workers = size, mode, workers
        self.progress, self.failure = progress, failure
        self.state = [dict(commits=0, attempts=0, busy=0, executions=0) for _ in workers]
        self.buffers = [b"" for _ in workers]
        self.ready = self.finished = 0
        self.started = self.last_shown = 0.0

    def run(self) -> PhaseResult:
        """Wait for every client's ``done`` (within the demo's timeout); the figures of the run."""
        title = MODE_TITLES[self.mode]
        deadline = time.monotonic() + self.size.timeout
        selector = selectors.DefaultSelector()
        for index, proc in enumerate(self.workers):
            assert proc.stdout is not None  # the clients are started with stdout=PIPE
            selector.register(proc.stdout, selectors.EVENT_READ, index)
        try:
            while self.finished < len(self.workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoError(
                        "the %s run did not finish within %.0fs (see --timeout)" % (title, self.size.timeout)
                    )
                for key, _ in selector.select(min(remaining, 0.5)):
                    self._read(selector, key)
                self._show_now_and_then()
            wall = time.monotonic() - self.started
            for proc in self.workers:
                assert proc.stdin is not None  # the clients are started with stdin=PIPE
                proc.stdin.close()
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            selector.close()
        result = PhaseResult(self.mode, self.size.clients, self.size.writes, self.size.work_ms, wall=wall)
        _add_counts(result, self.state)
        self.progress.show(self._text(wall) + "  done", final=True)
        return result

    def _read(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        index = key.data
        chunk = os.read(key.fd, 65536)
        if not chunk:
            selector.unregister(key.fileobj)
            if "done" not in self.state[index]:
                raise DemoError(self.failure(self.workers[index]))
            return
        *lines, self.buffers[index] = (self.buffers[index] + chunk).split(b"\n")
        for line in lines:
            self._handle(index, json.loads(line))

    def _handle(self, index: int, message: dict[str, Any]) -> None:
        """One client's line: ready (all ready: go), a commit's running totals, or done."""
        if "ready" in message:
            self.ready += 1
            if self.ready == len(self.workers):
                self.started = self.last_shown = time.monotonic()
                for proc in self.workers:
                    assert proc.stdin is not None  # the clients are started with stdin=PIPE
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
        elif "done" in message:
            self.state[index].update(message["done"])
            self.state[index]["done"] = True
            self.finished += 1
        else:
            self.state[index].update(
                {k: message[k] for k in ("attempts", "busy", "executions")}, commits=message["commit"],
            )

    def _show_now_and_then(self) -> None:
        now = time.monotonic()
        if self.started and now - self.last_shown >= self.progress.period:
            self.last_shown = now
            self.progress.show(self._text(now - self.started))

    def _text(self, elapsed: float) -> str:
        totals = {field: sum(s[field] for s in self.state) for field in ("commits", "attempts", "busy", "executions")}
        commits, busy = totals["commits"], totals["busy"]
        return "  %-8s %3d/%d commits  %4d conflicts  %3d zlock retries  %4d wasted  %5.1fs" % (
            MODE_TITLES[self.mode] + ":", commits, self.size.commits, totals["attempts"] - commits - busy, busy,
            totals["executions"] - commits, elapsed)


# -- the whole demo


class Demo:
    """Owns everything one demo run starts; ``close()`` stops and removes it all."""

    def __init__(self, clients: int, writes: int, work_ms: float, store: str = "auto",
                 timeout: float = DEFAULT_TIMEOUT, progress: IO[str] | None = None) -> None:
        self.size = DemoSize(clients, writes, work_ms, timeout)
        self.store_choice = store
        self.progress = Progress(progress)
        self.workspace = Workspace()
        self.run_id = os.urandom(4).hex()
        self.zeo_port: int | None = None
        self.store: LockStore | None = None

    def run(self) -> list[PhaseResult]:
        """The whole demo: servers, store, both runs, final counts."""
        # The store first: a bad MEMCACHEDLOCK_SERVERS is reported before anything starts.
        self.store = store = choose_store(self.workspace, self.store_choice)
        logger.debug("demo clients get %s", store.env)
        say = self.progress.say
        say("Starting a ZEO server on a temporary FileStorage...")
        self.zeo_port = start_zeo(self.workspace)
        say("ZEO server: 127.0.0.1:%d (%s)" % (self.zeo_port, self.workspace.path("Data.fs")))
        say("Lock store: %s" % store.description)
        create_objects(self.zeo_port)
        say(
            "%d client processes x %d writes to one hot object, %g ms of CPU work per write,"
            " retried by transaction.manager.attempts():" % (self.size.clients, self.size.writes, self.size.work_ms)
        )
        results = [self.run_phase(mode) for mode in MODES]
        counts = read_counts(self.zeo_port)
        for result in results:
            result.final_count = counts[result.mode]
        return results

    def run_phase(self, mode: str) -> PhaseResult:
        """Start the clients, release them together, collect their figures."""
        workers = self._start_clients(mode)
        return PhaseRun(self.size, mode, workers, self.progress, lambda proc: self._client_failure(mode, proc)).run()

    def _client_env(self) -> dict[str, str]:
        assert self.store is not None  # run() chooses it before it starts clients
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCACHEDLOCK_")}
        env.update(self.store.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start_clients(self, mode: str) -> list[subprocess.Popen[bytes]]:
        """The client processes of one phase, each waiting for ``go`` on its stdin."""
        code = "import sys; from unimr.memcachedlock.tools.demo import worker_main; sys.exit(worker_main(sys.argv[1:]))"
        args = [sys.executable, "-c", code, "--zeo", str(self.zeo_port), "--mode", mode,
                "--writes", str(self.size.writes), "--work", repr(self.size.work_ms),
                "--name", "hot-" + mode, "--key", "demo-%s" % self.run_id]
        env = self._client_env()
        with open(self.workspace.path("client-%s.log" % mode), "ab") as log:
            return [self.workspace.spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
                    for _ in range(self.size.clients)]

    def _client_failure(self, mode: str, proc: subprocess.Popen[bytes]) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        last = self.workspace.last_line("client-%s.log" % mode) or "no output"
        return "a %s client (pid %d) failed with exit code %s: %s" % (
            MODE_TITLES[mode], proc.pid, proc.returncode, last)

    def close(self) -> None:
        """Stop every process the demo started and remove its temporary directory."""
        self.workspace.close()

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def format_table(results: list[PhaseResult]) -> str:
    """The result table: one row per run, speed-up against the unlocked run."""
    base = results[0].wall
    header = ("run", "commits", "conflicts", "zlock retries", "executions", "wasted",
              "wasted/commit", "wall", "speed-up", "count")
    rows = [header]
    for r in results:
        rows.append((
            MODE_TITLES[r.mode], str(r.commits), str(r.conflicts), str(r.busy), str(r.executions),
            str(r.wasted), "%.2f" % r.wasted_per_commit, "%.2fs" % r.wall,
            "%.2fx" % (base / r.wall) if r.wall else "-",
            "%d/%d%s" % (r.final_count, r.expected, "" if r.nothing_lost else " LOST"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: Printed under the table: what its columns count.
LEGEND = (
    "conflicts: attempts lost to a ConflictError after doing the work; zlock retries: attempts zlock "
    "restarted before doing the work (LockBusy) because another client held the lock or this client's "
    "view predated its last commit; wasted: executions of the work that did not commit."
)


def summary(results: list[PhaseResult]) -> str:
    """One or two sentences reading the table."""
    plain, locked = results[0], results[-1]
    text = (
        "Without a lock %d of %d executions of the work were thrown away by ConflictErrors"
        " (%.2f per commit); with zlock %d (%.2f per commit)."
        % (plain.wasted, plain.executions, plain.wasted_per_commit, locked.wasted, locked.wasted_per_commit)
    )
    if locked.wall and plain.wall:
        text += " zlock took %.2fx the time of the unlocked run (speed-up %.2fx)." % (
            locked.wall / plain.wall, plain.wall / locked.wall)
    if not all(r.nothing_lost for r in results):
        text += " UPDATES WERE LOST: the final count differs from the commits."
    return text


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP turned into an exception, so that cleanup runs."""


def run_demo(clients: int = DEFAULT_CLIENTS, writes: int = DEFAULT_WRITES, work_ms: float = DEFAULT_WORK_MS,
             store: str = "auto", timeout: float = DEFAULT_TIMEOUT, as_json: bool = False,
             out: IO[str] | None = None, progress: IO[str] | None = None) -> int:
    """Run the demo and print its table (or JSON); return the exit code.

    0: both runs finished and nothing was lost; 1: an update was lost.
    Raises DemoError (one clear line) if it could not run.
    """
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress is None else progress
    check_counts(clients, writes, work_ms, timeout)
    if store not in STORE_CHOICES:
        raise DemoError("unknown lock store %r: use one of %s" % (store, ", ".join(STORE_CHOICES)))
    missing = [name for name in ("ZEO", "ZODB", "transaction") if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError("the demo needs %s: pip install 'unimr.memcachedlock[zope]'" % ", ".join(missing))

    def interrupted(signum: int, frame: FrameType | None) -> NoReturn:
        # A second signal must not cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        raise _Interrupted(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, interrupted)
    try:
        with Demo(clients, writes, work_ms, store, timeout, progress) as demo:
            results = demo.run()
            assert demo.store is not None and demo.zeo_port is not None  # run() set them
            store_info = dataclasses.asdict(demo.store)
            zeo_port = demo.zeo_port
    except _Interrupted as exc:
        raise DemoError("stopped by signal %d; everything it started was cleaned up" % exc.args[0]) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if as_json:
        json.dump({
            "store": {"kind": store_info["kind"], "description": store_info["description"]},
            "zeo": "127.0.0.1:%d" % zeo_port,
            "runs": [r.as_dict() for r in results],
            "speedup": round(results[0].wall / results[-1].wall, 3) if results[-1].wall else None,
        }, out, indent=2)
        out.write("\n")
    else:
        out.write("\n" + format_table(results) + "\n\n" + LEGEND + "\n\n" + summary(results) + "\n")
    out.flush()
    return 0 if all(r.nothing_lost for r in results) else 1


def check_counts(clients: int, writes: int, work_ms: float, timeout: float) -> None:
    """Refuse sizes the demo cannot run sensibly, naming the bad value."""
    if not 1 <= clients <= 32:
        raise DemoError("--clients must be between 1 and 32, not %r" % clients)
    if not 1 <= writes <= 10000:
        raise DemoError("--writes must be between 1 and 10000, not %r" % writes)
    if not 0 <= work_ms <= 10000:
        raise DemoError("--work must be between 0 and 10000 ms, not %r" % work_ms)
    if not 1 <= timeout <= 86400:
        raise DemoError("--timeout must be between 1 and 86400 s, not %r" % timeout)
