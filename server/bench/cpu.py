"""Where the machine's CPU went during a run: the server, PostgreSQL, the load generator.

Why: every ratio of the bench is "this, against that, on the same machine", and on a small
machine the parts share its cores. CPU time per group over a run's wall time says which part
was busy and which waited: a group near one core per process is the bottleneck, a group far
below it waited on another. A group is process trees (from ``/proc``: each process with its
descendants, and the time of descendants that already exited and were reaped, so that
PostgreSQL's short-lived backends count), or ``CHILDREN``: this process's own finished
children (pgbench).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
CHILDREN = -1  # a root meaning "the finished children of this process"


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (Linux /proc)."""
    found = [pid]
    index = 0
    while index < len(found):
        try:
            for task in Path(f"/proc/{found[index]}/task").iterdir():
                found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
        index += 1
    return found


def _seconds(root: int) -> float:
    if root == CHILDREN:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    total = 0
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICK


class Meter:
    """CPU of each group between ``start`` and ``stop``, in cores (1.0 = one core busy)."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self._roots = {name: list(roots) for name, roots in groups.items()}
        self._before: dict[str, float] = {}
        self._started = 0.0

    def _now(self) -> dict[str, float]:
        return {name: sum(_seconds(r) for r in roots) for name, roots in self._roots.items()}

    def start(self) -> None:
        self._before = self._now()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._started, 1e-9)
        after = self._now()
        return {n: round((after[n] - self._before[n]) / wall, 2) for n in self._roots}
