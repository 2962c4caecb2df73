"""How long the console takes to draw an account page, by the size of the account's history.

``python -m creditwallet.server.bench.console_pages``: its own embedded PostgreSQL
(``.data/bench-console``), the real server and the console in this process, one account per
size with that many debits written by BatchDebit, then the account page fetched signed in,
``REPEATS`` times each; prints the median and the worst in milliseconds. The page reads the
balance, the pending holds, a page of history and up to ``CONSOLE_CHART_PAGES_MAX`` pages of
500 rows for the 30-day charts, so the figure grows with the history up to that cap.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
from creditwallet.client import builders
from creditwallet.client.console.app import serving
from creditwallet.client.console.config import ConsoleConfig
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.settings import Secret
from creditwallet.server import app, db, migrate
from creditwallet.server.config import ServerConfig, Token
from creditwallet.v1 import common_pb2

SIZES = (100, 2_000, 12_000)
REPEATS = 7
ADMIN = "bench-admin-" + "c" * 32
# Debits per BatchDebit: small enough for the server's bound on a request's bytes.
BATCH = 500


async def main() -> None:
    data = Path(".data/bench-console")
    superuser = db.start_embedded(data)
    owner, runtime = await db.provision(superuser, "console_bench")
    conn = await asyncpg.connect(owner)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    config = ServerConfig(
        database_url=None,
        grpc_address="127.0.0.1:0",
        tokens=(Token("admin", "admin", Secret(ADMIN)),),
        data_dir=data,
    )
    server = await app.start(config, dsn=runtime, address="127.0.0.1:0")
    target = f"127.0.0.1:{server.port}"
    client = AsyncCreditWalletClient(target, ADMIN, timeout_seconds=60)
    console = ConsoleConfig("127.0.0.1", 0, target, Secret(ADMIN))
    try:
        async with (
            serving(console) as (_, port),
            aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1 too
            ) as http,
        ):
            base = f"http://127.0.0.1:{port}"
            await http.post(f"{base}/sign-in", data={"token": ADMIN})
            for size in SIZES:
                user = f"bench-{size}-{time.time_ns()}"
                await client.grant(
                    user, size * 1000, common_pb2.LOT_SOURCE_PROMO, create_account=True
                )
                for start in range(0, size, BATCH):
                    count = min(BATCH, size - start)
                    await client.batch_debit(
                        [builders.debit(user, amount_micros=1000) for _ in range(count)]
                    )
                times = []
                for _ in range(REPEATS):
                    began = time.perf_counter()
                    async with http.get(f"{base}/accounts/{user}") as reply:
                        body = await reply.text()
                        if reply.status != 200 or "Balances" not in body:
                            raise RuntimeError(f"not the account page: {body[:500]}")
                    times.append((time.perf_counter() - began) * 1000)
                print(
                    f"history {size + 1:>6} rows: account page median "
                    f"{statistics.median(times):7.1f} ms, worst {max(times):7.1f} ms"
                    f"{'  (charts capped)' if 'too long to chart' in body else ''}",
                    flush=True,
                )
    finally:
        await client.close()
        await server.stop(grace_seconds=1.0)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
