"""The demo's figures and how they are read: one result per run, the table, its legend, a summary."""

from __future__ import annotations

import dataclasses

MODE_TITLES = {"nolock": "no lock", "zlock": "zlock"}


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
    #: Writes given up after MAX_ATTEMPTS ConflictErrors in a row: requests that failed (not lost).
    failed: int = 0
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
        return self.final_count == self.commits == self.expected - self.failed

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
            "%d/%d%s%s" % (r.final_count, r.expected, " (%d failed)" % r.failed if r.failed else "",
                           "" if r.nothing_lost else " LOST"),
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
    for r in results:
        if r.failed:
            text += " %s: %d of its writes failed every attempt (counted as failed requests, not lost)." % (
                MODE_TITLES[r.mode], r.failed)
    if not all(r.nothing_lost for r in results):
        text += " UPDATES WERE LOST: the final count differs from the commits."
    return text
