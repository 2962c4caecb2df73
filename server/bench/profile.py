"""Where the server's time goes under load: py-spy samples, bucketed by what the stack is in.

Buckets, by the innermost frame that decides: ``grpc`` (grpc.aio and its Cython core),
``asyncpg`` (driver encode/decode), ``handler`` (our servicers, validation, ledger Python),
``protobuf`` (message (de)serialization), ``idle`` (the event loop waiting: for PostgreSQL or
for callers), ``other`` (the rest of the loop machinery). Idle samples are included
(``--idle``) so the shares sum to wall time of the one event-loop thread.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_BUCKETS = (
    ("asyncpg", ("asyncpg",)),
    ("protobuf", ("protobuf",)),
    ("grpc", ("grpc",)),
    ("handler", ("/server/", "/clients/")),
)


@dataclasses.dataclass
class Report:
    path: Path | None = None

    def breakdown(self) -> dict[str, float]:
        if self.path is None or not self.path.exists():
            return {}
        counts: collections.Counter[str] = collections.Counter()
        for line in self.path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            counts[classify(stack)] += int(n)
        counts.pop("grpc poller thread", None)  # shares of the event-loop thread only
        total = sum(counts.values()) or 1
        return {k: round(100.0 * v / total, 1) for k, v in counts.most_common()}


def classify(stack: str) -> str:
    frames = stack.split(";")
    if frames[0].startswith("Thread._bootstrap"):
        return "grpc poller thread"
    if frames[-1].startswith(("Runner.run ", "run_forever", "BaseEventLoop.run_forever")):
        return "idle"  # uvloop waiting in C: for PostgreSQL or for callers
    for frame in reversed(frames):
        for bucket, needles in _BUCKETS:
            if any(needle in frame for needle in needles):
                return bucket
    return "other"


@contextlib.contextmanager
def sampling(pid: int, seconds: float, *, enabled: bool) -> Iterator[Report]:
    report = Report()
    spy = shutil.which("py-spy")
    if not enabled or spy is None:
        yield report
        return
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--idle",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield report
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        report.path = out
