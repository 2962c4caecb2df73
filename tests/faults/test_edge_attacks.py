"""Resource attacks on the server's edge while an authenticated caller keeps debiting.

For each attack (``tests/faults/attacker.py``, a process of its own, loopback only, bounded in
count and time) the scenario measures authenticated Debits one after another: first unloaded,
then while the attack runs. It asserts what must hold on any machine: every Debit is
answered, none RESOURCE_EXHAUSTED, none slower than a generous deadline. The latency figures
(p50 unloaded, p50 under attack, their ratio) are printed in the summary, never asserted
(this machine's speed is no contract); ``make faults`` runs the attacks at full size.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.faults import load
from tests.faults.conftest import Scale
from tests.faults.serverproc import REPO_ROOT, ServerProcess
from tests.harness import new_user

DEBIT_DEADLINE_SECONDS = 10.0  # generous: a stall, not a slow machine, fails it
READY_TIMEOUT_SECONDS = 60.0
# kind -> (calls in the short form, in the full form)
ATTACKS = {
    "watch": (300, 2048),
    "bodiless": (300, 2100),
    "bodiless-authed": (200, 1000),
    "big": (1, 1),
    "oversize-authed": (8, 25),
    "headers": (20, 100),
}


async def debits(
    client: AsyncCreditWalletClient, user: str, count: int, seconds: float
) -> list[float]:
    """Up to ``count`` sequential debits within ``seconds``; their latencies (s)."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    for _ in range(count):
        if latencies and time.monotonic() > stop:
            break
        started = time.perf_counter()
        reply = await client.debit(user, amount_micros=load.DEBIT_MICROS)
        latencies.append(time.perf_counter() - started)
        assert reply.charged_micros == load.DEBIT_MICROS
    return latencies


@pytest.mark.parametrize("kind", list(ATTACKS))
async def test_debits_are_answered_during_the_attack(
    server_proc: ServerProcess, scale: Scale, record: list[str], kind: str, logs_dir: Path
) -> None:
    calls = ATTACKS[kind][1 if scale.full else 0]
    seconds = 12.0 if scale.full else 4.0
    admin = load.client(server_proc.target)
    agent = load.client(server_proc.target, "agent", timeout_seconds=DEBIT_DEADLINE_SECONDS)
    user = new_user()
    attacker = None
    attacker_log = (logs_dir / f"attacker-{kind}.log").open("wb")
    try:
        await load.fund(admin, [user], credits=100)
        await debits(agent, user, 20, 5.0)  # warm up: connection, statements, pool
        unloaded = await debits(agent, user, 200 if scale.full else 60, 5.0)
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.attacker",
            kind,
            server_proc.target,
            str(calls),
            str(seconds + 10.0),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=attacker_log,
        )
        assert attacker.stdout is not None
        line = await asyncio.wait_for(attacker.stdout.readline(), READY_TIMEOUT_SECONDS)
        assert line.strip() == b"ready", line
        await asyncio.sleep(0.5)  # the first wave is in place
        try:
            loaded = await debits(agent, user, 100_000, seconds)
        except cw.CreditWalletError as exc:
            record.append(f"attack {kind}: an authenticated Debit failed: {exc!r}")
            raise
        p50_unloaded = statistics.median(unloaded) * 1000
        p50_loaded = statistics.median(loaded) * 1000
        record.append(
            f"attack {kind} x{calls}: debits={len(loaded)} all answered, "
            f"p50 unloaded={p50_unloaded:.2f} ms, under attack={p50_loaded:.2f} ms, "
            f"ratio={p50_loaded / p50_unloaded:.2f}, max={max(loaded) * 1000:.0f} ms"
        )
        assert max(loaded) < DEBIT_DEADLINE_SECONDS
    finally:
        if attacker is not None and attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
        attacker_log.close()
        await admin.close()
        await agent.close()
    assert server_proc.alive(), server_proc.log_tail()
    load.assert_no_secrets(server_proc.log_text(), "the server's log")
