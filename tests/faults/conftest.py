"""The fault suite's switches and shared fixtures.

``make faults`` passes ``--faults-full`` for the long form; the normal ``make test`` run
collects this directory too and runs every scenario in its short form (a few seconds each).
Each scenario records one line of figures; they are printed together at the end of the run,
so they show without ``-s``. (``--faults-full`` is declared here, so pass it only with
``pytest tests/faults``, as the make target does.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests import harness
from tests.faults.load import Plan
from tests.faults.serverproc import ServerProcess

FIGURES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults-full",
        action="store_true",
        default=False,
        help="run the fault scenarios with their full load (make faults)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = terminalreporter.config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("fault scenarios")
        for line in figures:
            terminalreporter.write_line(line)


@dataclasses.dataclass(frozen=True)
class Scale:
    full: bool
    plan: Plan
    users: int


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    full = bool(request.config.getoption("--faults-full", default=False))
    if full:
        return Scale(True, Plan(ops=3000, concurrency=24, pace_seconds=0.01), users=30)
    return Scale(False, Plan(ops=300, concurrency=12, pace_seconds=0.03), users=10)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines a scenario wants in the summary (added even when it fails, for the post-mortem)."""
    lines: list[str] = []
    yield lines
    request.config.stash[FIGURES].extend(lines)


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    """Where server children write their logs (pytest keeps the last few runs' for post-mortems)."""
    return tmp_path


@pytest_asyncio.fixture(loop_scope="session")
async def server_proc(base_dsn: str, logs_dir: Path) -> AsyncIterator[ServerProcess]:
    """A server child on a fresh migrated database of the session cluster, SERVING."""
    dsn = await harness.fresh_database(base_dsn)
    proc = ServerProcess(dsn, logs_dir / "server.log")
    proc.start()
    try:
        await proc.wait_serving()
        yield proc
    finally:
        proc.stop()
