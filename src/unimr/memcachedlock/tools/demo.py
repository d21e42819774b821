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

This module runs the demo; ``demoworld`` sets up what it runs on,
``democlient`` is the clients' workload and ``demoreport`` reads the
figures.  Their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn

from .democlient import MAX_ATTEMPTS, MODES, burn, worker_main
from .demoreport import LEGEND, MODE_TITLES, PhaseResult, format_table, summary
from .demoworld import DemoError, LockStore, Workspace, choose_store, create_objects, read_counts, start_zeo

__all__ = ["run_demo", "check_counts", "Demo", "DemoSize", "PhaseRun", "Progress", "DemoError", "PhaseResult",
           "LockStore", "Workspace", "choose_store", "start_zeo", "create_objects", "read_counts", "worker_main",
           "burn", "format_table", "summary", "LEGEND", "MODES", "MODE_TITLES", "MAX_ATTEMPTS", "DEFAULT_CLIENTS",
           "DEFAULT_WRITES", "DEFAULT_WORK_MS", "DEFAULT_TIMEOUT", "STORE_CHOICES"]

logger = logging.getLogger(__name__)

DEFAULT_CLIENTS = 4
DEFAULT_WRITES = 15
DEFAULT_WORK_MS = 20.0
DEFAULT_TIMEOUT = 120.0
STORE_CHOICES = ("auto", "memcached", "file")


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
        for field in ("commits", "attempts", "busy", "executions", "failed"):
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

# -- one run


class PhaseRun:
    """One run: releases the clients of one mode together and collects their JSON lines."""

    def __init__(self, size: DemoSize, mode: str, workers: list[subprocess.Popen[bytes]], progress: Progress,
                 failure: Callable[[subprocess.Popen[bytes]], str]) -> None:
        self.size, self.mode, self.workers = size, mode, workers
        self.progress, self.failure = progress, failure
        self.state = [dict(commits=0, attempts=0, busy=0, executions=0, failed=0) for _ in workers]
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
                {k: message[k] for k in ("attempts", "busy", "executions", "failed")}, commits=message["commit"],
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
