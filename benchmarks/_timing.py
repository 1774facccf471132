"""Timing: every method of a scenario measured round-robin, under the same load.

On a shared machine the load changes from second to second. Timing method A
for a while and then method B would charge A and B with different loads, so a
scenario times one step of each method per round, rotating the order every
round, and reports the median, minimum and maximum over the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def round_robin(
    steps: dict[str, Callable[[], Any]], *, rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each step, one call of each per round, order rotated."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def round_robin_tiered(
    fast: dict[str, Callable[[int], Any]],
    slow: dict[str, Callable[[int], Any]],
    *,
    rounds: int,
    slow_every: int,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Like `round_robin` for steps that take the round index, with slow steps thinned.

    Every round times each `fast` step once; every `slow_every`-th round
    (round 0 included) also times each `slow` step, interleaved with the fast
    ones and in rotated order. Steps get the round index (to cycle through
    their batches). `slow_every` is capped so that slow steps get at least 3
    rounds (or 1 when `rounds` < 3).
    """
    steps = {**fast, **slow}
    for i in range(warmup):
        for step in steps.values():
            step(i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    slow_every = max(1, min(slow_every, rounds // 3 or 1))
    for r in range(rounds):
        names = list(fast) + (list(slow) if r % slow_every == 0 else [])
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name](r)
            times[name].append(time.perf_counter() - start)
    return times


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """Median, minimum and maximum, in milliseconds."""
    ms = [1e3 * s for s in seconds]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "rounds": len(ms),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_alone(
    description: str,
    run: Callable[..., list[dict[str, Any]]],
    table: Callable[[list[dict[str, Any]]], str],
    configs: dict[str, dict[str, Any]],
    quick_help: str,
    argv: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The command line of a scenario module run on its own.

    ``--quick`` and ``--tiny`` pick ``configs["quick"]`` or ``configs["tiny"]``
    (default ``configs["full"]``); prints the platform, CPU count and load
    average, then ``table(rows)``; returns the rows.
    """
    import argparse
    import os

    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=quick_help)
    mode.add_argument("--tiny", action="store_true", help="toy sizes")
    args = parser.parse_args(argv)
    config = configs["tiny" if args.tiny else "quick" if args.quick else "full"]
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{jax.devices()[0].platform}, {os.cpu_count()} cpus{load}")
    rows = run(**config)
    print(table(rows))
    return rows

