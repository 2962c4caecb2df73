"""Load generators for ``make bench``: timed closed loops of debits, and their statistics.

A scenario runs ``callers`` concurrent loops for ``seconds``; each loop sends one debit,
waits for its answer, and sends the next (a closed loop, as agent runtimes do). Latency is
measured per call with ``perf_counter``; throughput is completed debits over wall time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable

ACCOUNTS = 100_000
HOT_ACCOUNT = "bench-hot"
DEBIT_MICROS = 1_000


def user_for(spread: bool, n: int) -> str:
    return f"bench-{(n * 7919) % ACCOUNTS}" if spread else HOT_ACCOUNT


@dataclasses.dataclass(frozen=True)
class Figures:
    per_second: float
    p50_ms: float
    p99_ms: float
    count: int


async def closed_loop(
    callers: int, seconds: float, one_call: Callable[[int], Awaitable[object]]
) -> Figures:
    counter = itertools.count()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            started = time.perf_counter()
            await one_call(n)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(callers)))
    elapsed = time.perf_counter() - began
    return summarize(latencies, elapsed)


def summarize(latencies: list[float], elapsed: float) -> Figures:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Figures(
        len(ordered) / elapsed, statistics.median(ordered) * 1000, p99 * 1000, len(ordered)
    )


def median_of(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(r.per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.count for r in runs),
    )
