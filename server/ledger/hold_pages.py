"""ListHolds: an account's pending holds in keyset pages, the soonest to expire first.

A hold past its expiry is released by the account's next expiry sweep; until then its row
still says ``pending``, so the page leaves out holds whose ``expires_at`` is not after
``now``: what is listed is what is really held. Pages are keyset pages over
``(expires_at, hold_id)`` (the ``holds_pending`` index), with a token bound to the account.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid

from creditwallet.core import limits
from creditwallet.server import errors
from creditwallet.server.db import Connection
from creditwallet.server.ledger.types import Hold

_PAGE = f"""
SELECT {Hold.COLUMNS} FROM holds
WHERE user_id = $1 AND status = 'pending' AND expires_at > $2
  AND (expires_at, hold_id) > ($3, $4)
ORDER BY expires_at, hold_id LIMIT $5
"""

_TOKEN_PREFIX = "h1"
_START = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), uuid.UUID(int=0))


async def page(
    conn: Connection, user_id: str, now: dt.datetime, page_size: int, page_token: str
) -> tuple[list[Hold], str]:
    after = decode_token(page_token, user_id) if page_token else _START
    rows = [
        Hold.from_row(r)
        for r in await conn.fetch(_PAGE, user_id, now, after[0], after[1], page_size + 1)
    ]
    if len(rows) <= page_size:
        return rows, ""
    rows = rows[:page_size]
    return rows, encode_token(user_id, rows[-1])


def encode_token(user_id: str, last: Hold) -> str:
    micros = int(last.expires_at.timestamp()) * 1_000_000 + last.expires_at.microsecond
    raw = json.dumps([_TOKEN_PREFIX, user_id, micros, str(last.hold_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, user_id: str) -> tuple[dt.datetime, uuid.UUID]:
    if len(token) > limits.PAGE_TOKEN_LENGTH_MAX:
        raise errors.invalid("page_token", "page_token is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        prefix, token_user, micros, hold_id = json.loads(raw)
        if not isinstance(micros, int) or isinstance(micros, bool) or micros < 0:
            raise ValueError(micros)
        after = (
            dt.datetime.fromtimestamp(micros // 1_000_000, dt.UTC).replace(
                microsecond=micros % 1_000_000
            ),
            uuid.UUID(hold_id),
        )
    except (ValueError, TypeError, OverflowError, OSError, AttributeError, binascii.Error):
        raise errors.invalid("page_token", "page_token is malformed") from None
    if prefix != _TOKEN_PREFIX or token_user != user_id:
        raise errors.invalid("page_token", "page_token does not belong to this request")
    return after
