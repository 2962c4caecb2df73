"""The append-only history (``credit_transactions``) and its keyset pages.

Each row records the balance after it. Pages are keyset pages over the account's
``transaction_id`` (newest first, no OFFSET): the account lock makes ids grow in the order
rows of one account commit, so rows written while a client pages appear before its first
page and never in a gap or twice.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping

from creditwallet.core import limits
from creditwallet.server import errors, page_tokens
from creditwallet.server.db import Connection
from creditwallet.server.ledger.types import Transaction

_APPEND = """
INSERT INTO credit_transactions (user_id, type, source, amount_micros, balance_after_micros,
    request_id, agent_id, quantity, session_id, hold_id, related_transaction_id, metadata,
    created_at, member_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14)
RETURNING transaction_id
"""

_PAGE = f"""
SELECT {Transaction.COLUMNS} FROM credit_transactions
WHERE user_id = $1 AND transaction_id < $2 AND ($3::text IS NULL OR type = $3)
ORDER BY transaction_id DESC LIMIT $4
"""

_TOKEN_PREFIX = "t1"


async def append(
    conn: Connection,
    user_id: str,
    type_: str,
    amount_micros: int,
    balance_after_micros: int,
    now: dt.datetime,
    *,
    source: str | None = None,
    request_id: str | None = None,
    agent_id: str | None = None,
    quantity: int | None = None,
    session_id: str | None = None,
    hold_id: uuid.UUID | None = None,
    related_transaction_id: int | None = None,
    metadata: Mapping[str, str] | None = None,
    member_id: str | None = None,
) -> int:
    tx_id = await conn.fetchval(
        _APPEND,
        user_id,
        type_,
        source,
        amount_micros,
        balance_after_micros,
        request_id,
        agent_id,
        quantity,
        session_id or None,
        hold_id,
        related_transaction_id,
        json.dumps(dict(metadata), sort_keys=True) if metadata else None,
        now,
        member_id,
    )
    assert isinstance(tx_id, int)
    return tx_id


async def page(
    conn: Connection, user_id: str, type_: str | None, page_size: int, page_token: str
) -> tuple[list[Transaction], str]:
    before = decode_token(page_token, user_id, type_) if page_token else limits.INT64_MAX
    rows = [
        Transaction.from_row(r)
        for r in await conn.fetch(_PAGE, user_id, before, type_, page_size + 1)
    ]
    if len(rows) <= page_size:
        return rows, ""
    rows = rows[:page_size]
    return rows, encode_token(user_id, type_, rows[-1].transaction_id)


def encode_token(user_id: str, type_: str | None, before: int) -> str:
    return page_tokens.encode(_TOKEN_PREFIX, user_id, type_ or "", before)


def decode_token(token: str, user_id: str, type_: str | None) -> int:
    """An opaque token bound to the account and the filter it was issued for."""
    fields = page_tokens.decode(token, _TOKEN_PREFIX, limits.PAGE_TOKEN_LENGTH_MAX)
    if len(fields) != 3:
        raise errors.invalid("page_token", "page_token does not belong to this request")
    token_user, token_type, before = fields
    if (
        token_user != user_id
        or token_type != (type_ or "")
        or not isinstance(before, int)
        or isinstance(before, bool)
        or not 0 < before <= limits.INT64_MAX
    ):
        raise errors.invalid("page_token", "page_token does not belong to this request")
    return before
