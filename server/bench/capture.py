"""The statements the server sends for one debit, captured, and turned into a pgbench script.

Why captured rather than written down: the PostgreSQL-alone ceiling must run exactly what the
server runs, and a copy of the SQL would drift from the code. ``capture_debit`` sends one
Debit through the real handler and the real debit route (``runtime.debits``, a batch of one)
on a pool whose connection logs every statement with its arguments (asyncpg's query logger),
BEGIN and COMMIT included. ``pgbench_script`` replaces the arguments that differ from one
debit to the next by pgbench variables:

- the account: ``'bench-' || :cw_acct`` (a random bench account, or the hot one);
- the request_id: ``'pgb-' || :cw_rid`` (random, so every transaction claims a new one);
- a time: ``now()``; a day: ``current_date``;
- colons inside literals written as escapes (``E'\\x3a'``), since pgbench reads ``:name``
  anywhere as a variable;
- the balance after the debit: ``:cw_after``, from the account lock's own result (``\\gset``);

and keeps every other argument as the literal the server sent (the method, the request's
digest, the stored result, ...). Run with ``-M prepared``, as asyncpg prepares its statements.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

from creditwallet.server import db
from creditwallet.server.clock import SystemClock
from creditwallet.server.ledger.batching import DebitBatcher
from creditwallet.server.services import Runtime
from creditwallet.server.services.wallet import WalletService
from creditwallet.v1 import wallet_service_pb2 as wpb

ACCOUNT = ":cw_acct"
_PLACEHOLDER = re.compile(r"\$(\d+)\b")


@dataclasses.dataclass(frozen=True)
class Statement:
    query: str
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Captured:
    user_id: str
    request_id: str
    amount_micros: int
    balance_before_micros: int
    statements: list[Statement]


async def capture_debit(
    dsn: str, user_id: str, request_id: str, amount: int, *, warm_user: str
) -> Captured:
    """One Debit through the handler and the one debit route, every statement recorded.

    A first debit of ``warm_user`` warms the connection (asyncpg introspects a type the
    first time a connection meets it), so only what a running server sends is recorded; warm
    on the same account to capture a debit that is not the account's first of the day.
    """
    statements: list[Statement] = []

    def record(logged: Any) -> None:
        if logged.exception is None:
            statements.append(Statement(logged.query, tuple(logged.args or ())))

    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        clock = SystemClock()
        handler = WalletService(Runtime(pool, clock, DebitBatcher.one_by_one(pool, clock)))
        warm = wpb.DebitRequest(user_id=warm_user, request_id=f"{request_id}-warm", amount_micros=1)
        await handler.Debit(warm, None)  # type: ignore[arg-type]
        async with pool.acquire() as conn:
            before = await conn.fetchval(
                "SELECT balance_micros FROM credits WHERE user_id = $1", user_id
            )
            conn.add_query_logger(record)
        request = wpb.DebitRequest(user_id=user_id, request_id=request_id, amount_micros=amount)
        await handler.Debit(request, None)  # type: ignore[arg-type]
    finally:
        await pool.close()
    return Captured(user_id, request_id, amount, int(before), statements)


def pgbench_script(captured: Captured, account: str) -> str:
    """The captured debit as a pgbench transaction; ``account`` is the SQL of the user_id."""
    after = captured.balance_before_micros - captured.amount_micros
    lines = [
        r"\set cw_acct random(0, 99999)",
        r"\set cw_rid random(1, 9000000000000000000)",
    ]
    for statement in captured.statements:
        query = " ".join(statement.query.split())

        def render(match: re.Match[str], args: tuple[Any, ...] = statement.args) -> str:
            return f"({_literal(args[int(match.group(1)) - 1], captured, account, after)})"

        sql = _PLACEHOLDER.sub(render, query).rstrip(";")
        if "FOR UPDATE" in sql and "FROM credits" in sql:
            lines.append(sql + r" \gset cw_lock_")
            lines.append(rf"\set cw_after :cw_lock_balance_micros - {captured.amount_micros}")
        else:
            lines.append(sql + ";")
    script = "\n".join(lines) + "\n"
    if ":cw_lock_balance_micros" not in script:
        raise RuntimeError("no account lock among the captured statements")
    return script


def _literal(value: Any, captured: Captured, account: str, after: int) -> str:
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v, captured, account, after) for v in value) + "]"
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return ":cw_after" if value == after else str(value)
    if isinstance(value, dt.datetime):
        return "now()"
    if isinstance(value, dt.date):
        return "current_date"
    if isinstance(value, bytes | bytearray):
        return f"'\\x{bytes(value).hex()}'::bytea"
    if isinstance(value, dict):
        value = json.dumps(value)
    text = str(value)
    if text == captured.user_id:
        return account
    if text == captured.request_id:
        return "'pgb-' || :cw_rid"
    if ":" in text:  # pgbench would take ":name" for a variable: spell colons as escapes
        escaped = text.replace("\\", "\\\\").replace("'", "''").replace(":", "\\x3a")
        return f"E'{escaped}'"
    return "'" + text.replace("'", "''") + "'"
