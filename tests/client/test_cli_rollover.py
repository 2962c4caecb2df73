"""``creditwallet rollover``: a long deadline and a progress bar fed by committed work.

The rollover commits chunk by chunk. Every account has an expiry due; another connection
holds the lock of the first account of the second chunk, so the run commits its first chunk
and then waits on that row: the progress read meanwhile must say exactly one chunk is done,
out of every due account, and the CLI's watcher must have shown that reading before the run
could finish. Released, the run completes and the last reading is all accounts.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from creditwallet.client.cli import watch_rollover
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.core import limits

from tests.harness import TOKENS, Ledger

pytestmark = pytest.mark.usefixtures("verified")

CHUNK = limits.ROLLOVER_CHUNK_ACCOUNTS
ACCOUNTS = CHUNK + 500  # two chunks
WAIT_SECONDS = 60.0


async def _until(condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_progress_counts_committed_chunks_while_the_run_waits(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        # Accounts whose next expiry has passed (a lower bound with nothing behind it: the
        # run only moves it on), the rollover's work list.
        await conn.execute(
            "INSERT INTO credits (user_id, next_expiry_at, created_at, updated_at) "
            "SELECT 'roll-' || lpad(g::text, 6, '0'), $1, $1, $1 FROM generate_series(1, $2) AS g",
            ledger.clock.now(),
            ACCOUNTS,
        )
        total = await conn.fetchval("SELECT count(*) FROM credits")
        # Work of another month's run, which this month's progress must not count.
        await conn.execute(
            "INSERT INTO rollover_runs (period, started_at, accounts_processed) "
            "VALUES ('2000-01', $1, 7)",
            ledger.clock.now(),
        )
        second_chunk_first = await conn.fetchval(
            "SELECT user_id FROM credits ORDER BY next_expiry_at, user_id OFFSET $1 LIMIT 1", CHUNK
        )
    period = ledger.clock.now().strftime("%Y-%m")
    blocker = await ledger.pool.acquire()
    blocked = blocker.transaction()
    await blocked.start()
    await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", second_chunk_first)
    readings: list[tuple[int, int]] = []
    outcome: dict[str, object] = {}

    def run() -> None:
        long = CreditWalletClient(ledger.target, TOKENS["admin"], timeout_seconds=WAIT_SECONDS)
        short = CreditWalletClient(ledger.target, TOKENS["admin"])
        with long, short:
            outcome["summary"] = watch_rollover(
                long, short, "", lambda done, of: readings.append((done, of)), poll_seconds=0.05
            )

    worker = threading.Thread(target=run)
    worker.start()
    try:
        await _until(lambda: (CHUNK, total) in readings, "the first chunk's reading")
        assert "summary" not in outcome  # the run is still waiting on the held row
        admin = ledger.client("admin")
        progress = await admin.get_rollover_progress(period)
        assert (progress.accounts_rolled_over, progress.accounts_total) == (CHUNK, total)
    finally:
        await blocked.rollback()
        await ledger.pool.release(blocker)
        await asyncio.to_thread(worker.join, WAIT_SECONDS)
    summary = outcome["summary"]
    assert summary.accounts_processed == total  # type: ignore[attr-defined]
    assert readings[-1] == (total, total)
    assert [done for done, _ in readings] == sorted(done for done, _ in readings)  # monotonic


async def test_progress_of_a_bad_period_is_a_usage_of_the_api(ledger: Ledger) -> None:
    from creditwallet.client.errors import InvalidArgument

    admin = ledger.client("admin")
    with pytest.raises(InvalidArgument):
        await admin.get_rollover_progress("2026-13")
    with pytest.raises(InvalidArgument):
        await admin.get_rollover_progress("2999-01")
