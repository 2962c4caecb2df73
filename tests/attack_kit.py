"""What the attack tests share: a ledger without background loops, helpers that fund accounts,
hold row locks to force interleavings, read history and events as rows, and the check that
every committed row has exactly its event."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests.harness import Ledger

CREDIT = 1_000_000
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.005
UTC = dt.UTC


async def start(base_dsn: str, data_dir: Path) -> Ledger:
    """No background loops: nothing but the test takes locks, and events are read as rows."""
    return await events_kit.start(base_dsn, data_dir, balance_low_default_micros=0, workers=False)


def _user(prefix: str = "u") -> str:
    return f"{prefix}-{harness.new_user()}"


async def _connect(ledger: Ledger) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(ledger.dsn)


async def _fetch(ledger: Ledger, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(ledger)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _history(ledger: Ledger, user: str) -> list[asyncpg.Record]:
    return await _fetch(
        ledger,
        "SELECT * FROM credit_transactions WHERE user_id = $1 ORDER BY transaction_id",
        user,
    )


async def _events(ledger: Ledger, user: str) -> list[dict[str, Any]]:
    return await events_kit.events_of(ledger.dsn, user)


def _alerts(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["type"], e["body"]) for e in events if e["type"].startswith("balance.")]


async def _verify(admin: AsyncCreditWalletClient, *users: str) -> list[str]:
    """VerifyLedger's violations; with ``users``, only theirs and the global ones (one test's
    finding must not fail the next test, which shares the database)."""
    report = await admin.verify_ledger()
    return [
        f"{v.invariant} {v.user_id}: {v.detail}"
        for v in report.violations
        if not users or v.user_id in users or not v.user_id
    ]


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not condition():
            await asyncio.sleep(POLL_SECONDS)


async def _hold_account(ledger: Ledger, user_id: str) -> asyncpg.Connection[asyncpg.Record]:
    conn = await _connect(ledger)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user_id)
    return conn


async def _release(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    if not conn.is_closed():
        await conn.execute("COMMIT")
        await conn.close()


async def _funded(
    admin: AsyncCreditWalletClient, credits: int, *, prefix: str = "u", **grant: Any
) -> str:
    user = _user(prefix)
    await admin.grant(
        user,
        credits * CREDIT,
        grant.pop("source", pb.LOT_SOURCE_TOP_UP),
        create_account=True,
        **grant,
    )
    return user


async def _set_alert(admin: AsyncCreditWalletClient, user: str, threshold: int) -> None:
    await admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=threshold)
    )


class OneBatch:
    """Parks both in-flight batches on a locked account, so what is submitted next queues up
    and forms a single batch when the plug is pulled."""

    def __init__(self, ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
        self.ledger = ledger
        self.admin = admin
        self.batcher = ledger.running.runtime.debits
        self.stuck: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> OneBatch:
        plug = await _funded(self.admin, 10, prefix="m-plug")
        self.watch = await _connect(self.ledger)
        self.plug = await _hold_account(self.ledger, plug)
        agent = self.ledger.client("agent")
        self.stuck = [
            asyncio.ensure_future(agent.debit(plug, amount_micros=1))
            for _ in range(self.batcher._in_flight_max)
        ]
        await harness.waiting_on_locks(self.watch, len(self.stuck))
        return self

    async def queued(self, count: int) -> None:
        await _until(lambda: self.batcher.queued >= count)

    async def pull(self) -> None:
        await _release(self.plug)
        await asyncio.gather(*self.stuck)

    async def __aexit__(self, *exc: object) -> None:
        await _release(self.plug)
        await self.watch.close()


def _month(value: dt.datetime, months: int) -> dt.datetime:
    from creditwallet.server.ledger import periods

    return periods.add_months(value, months, value.day)


async def every_row_has_its_event(ledger: Ledger) -> None:
    """One credits.* event per history row (grants excepted), one credits.granted per lot, one
    hold.created per hold, one hold.<end> per finalized hold, and per account sequence numbers
    1..n without a gap."""
    missing = await _fetch(
        ledger,
        """
        WITH expected AS (
            SELECT user_id, 'tx:' || transaction_id AS k FROM credit_transactions
            WHERE type <> 'grant'
            UNION ALL SELECT user_id, 'lot:' || lot_id FROM credit_lots
            UNION ALL SELECT user_id, 'hold:' || hold_id FROM holds
            UNION ALL SELECT user_id, 'end:' || hold_id FROM holds WHERE status <> 'pending'
        ), seen AS (
            SELECT user_id, CASE
                WHEN type LIKE 'credits.%' AND type NOT IN ('credits.granted', 'credits.expiring')
                    THEN 'tx:' || (body->>'transaction_id')
                WHEN type = 'credits.granted' THEN 'lot:' || (body->>'lot_id')
                WHEN type = 'hold.created' THEN 'hold:' || (body->>'hold_id')
                WHEN type LIKE 'hold.%' THEN 'end:' || (body->>'hold_id')
            END AS k
            FROM events WHERE type LIKE 'credits.%' OR type LIKE 'hold.%'
        )
        (SELECT 'no event' AS what, * FROM expected EXCEPT ALL SELECT 'no event', * FROM seen)
        UNION ALL
        (SELECT 'extra event', * FROM seen WHERE k IS NOT NULL
         EXCEPT ALL SELECT 'extra event', * FROM expected)
        """,
    )
    assert missing == [], missing[:10]
    gaps = await _fetch(
        ledger,
        "SELECT user_id, count(*) AS n, max(seq) AS top FROM events GROUP BY user_id "
        "HAVING count(*) <> max(seq) OR min(seq) <> 1",
    )
    assert gaps == []
