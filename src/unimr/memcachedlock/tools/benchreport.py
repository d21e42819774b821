"""The benchmark's report: its tables, its JSON and the goals its figures miss."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from typing import IO, TypedDict

from .benchscenarios import Handoff, Latency, Waiting


class Report(TypedDict, total=False):
    """What ``bench`` ran, as printed with ``--json``."""

    latency: Latency
    handoff: list[Handoff]
    waiting: list[Waiting]
    missed_goals: list[str]


def _fmt(value: float, digits: int = 1) -> str:
    return "%.*f" % (digits, value)


def _spread(values: Sequence[float], digits: int = 1) -> str:
    """``min / median / max`` of the rounds."""
    return " / ".join(_fmt(v, digits) for v in (min(values), statistics.median(values), max(values)))


def print_latency(result: Latency, out: IO[str] = sys.stdout) -> None:
    rounds = len(result["raw_rounds_us"])
    print("Uncontended acquire+release, %d rounds (min / median / max over rounds)" % rounds, file=out)
    print("| | us per pair | ratio to raw |", file=out)
    print("|---|---|---|", file=out)
    print("| raw pymemcache add + delete | %s | 1.00 |" % _spread(result["raw_rounds_us"]), file=out)
    print("| memcachedlock Lock (memcached) | %s | %s |" % (
        _spread(result["ours_rounds_us"]), _spread(result["ratio_rounds"], 2)), file=out)
    if "file_raw_us" in result:
        print("| raw open + flock + unlock + close | %s | 1.00 |" % _spread(result["file_raw_rounds_us"]),
              file=out)
        print("| memcachedlock Lock (file) | %s | %s |" % (
            _spread(result["file_ours_rounds_us"]), _spread(result["file_ratio_rounds"], 2)), file=out)


def print_handoff(results: list[Handoff], out: IO[str] = sys.stdout) -> None:
    print("Handoff: two workers take turns (hold %.0f ms)" % results[0]["hold_ms"], file=out)
    print("| workers | lock | p50 ms | p99 ms | alternated | shares | longest wait ms |", file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    for r in results:
        label = "raw add/delete, 1 ms polling" if r["kind"] == "raw" else "memcachedlock Lock"
        print("| 2 %s | %s | %s | %s | %d of %d (%.0f%%) | %s | %s |" % (
            {"process": "processes", "thread": "threads"}[r["mode"]], label, _fmt(r["p50_ms"], 2), _fmt(r["p99_ms"], 2),
            r["alternated"], r["handoffs"],
            100 * r["alternation"], "/".join(str(v) for v in r["shares"].values()), _fmt(r["max_gap_ms"])), file=out)


def print_waiting(results: list[Waiting], out: IO[str] = sys.stdout) -> None:
    print("Load while waiting for a held key (memcached requests per second)", file=out)
    print("| waiters | first %.1f s | rest of wait | per process (first / rest) |" % 0.2, file=out)
    print("|---|---|---|---|", file=out)
    for r in results:
        print("| %d processes x %d threads | %s | %s | %s / %s |" % (
            r["processes"], r["threads"], _fmt(r["early_per_s"], 0), _fmt(r["late_per_s"], 0),
            _fmt(r["early_per_s_per_process"], 0), _fmt(r["late_per_s_per_process"], 0)), file=out)


def missed_goals(report: Report) -> list[str]:
    """The goals (of the project's brief) the figures in ``report`` miss, each with its figure."""
    missed = []
    if "latency" in report and report["latency"]["ratio"] > 1.6:
        missed.append("latency ratio %.2f > 1.6" % report["latency"]["ratio"])
    if "handoff" in report:
        proc, thr = report["handoff"][1], report["handoff"][2]
        if not proc["p50_ms"] <= 2.0:
            missed.append("handoff between processes p50 %.2f ms > 2 ms" % proc["p50_ms"])
        if not thr["p50_ms"] <= 0.5:
            missed.append("handoff between threads p50 %.2f ms > 0.5 ms" % thr["p50_ms"])
        for label, r in (("processes", proc), ("threads", thr)):
            if not r["alternation"] >= 0.9:
                missed.append("alternation between %s %.0f%% < 90%%" % (label, 100 * r["alternation"]))
    return missed



def print_report(report: Report, missed: list[str], as_json: bool, check: bool) -> None:
    """The tables (or JSON), and with ``check`` the goals missed."""
    if as_json:
        if check:
            report["missed_goals"] = missed
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return
    if "latency" in report:
        print_latency(report["latency"])
        print()
    if "handoff" in report:
        print_handoff(report["handoff"])
        print()
    if "waiting" in report:
        print_waiting(report["waiting"])
    if check:
        print("\ngoals: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))

