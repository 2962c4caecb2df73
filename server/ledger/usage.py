"""Usage reports: credits spent per day, agent, member and session, from rollups.

Why rollups: a report over an account with millions of debits must not read them. The
triggers of migration 0014 keep two rollups in the transaction of every debit, capture and
reversal (``usage_daily`` per UTC day, agent and member; ``usage_sessions`` the same per
session too), so a report reads at most one row per group and day, whatever the size of the
history. A reversal counts on the row of the debit it gives back: the figures are those of
the debits made in the range, net of their reversals, whenever these came.

Pages are keyset pages over the group keys in one fixed order (day, agent, member, session,
whichever are chosen): groups are aggregates, so the next page starts after the last key,
never at an offset, and a token belongs to the request that produced it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Final

from creditwallet.core import limits
from creditwallet.server import errors, page_tokens
from creditwallet.server.db import Connection

# The keys, in the order groups are sorted; each is a column of both rollups.
KEYS: Final = ("day", "agent", "member", "session")
_COLUMN: Final = {
    "day": "day",
    "agent": "agent_id",
    "member": "member_id",
    "session": "session_id",
}
_CAST: Final = {"day": "date", "agent": "text", "member": "text", "session": "text"}

_TOKEN_PREFIX: Final = "u1"


@dataclasses.dataclass(frozen=True)
class UsageQuery:
    user_id: str
    start_day: dt.date
    end_day: dt.date  # excluded
    group_by: tuple[str, ...]  # a subset of KEYS, in KEYS order
    page_size: int

    def digest(self) -> str:
        """What a page token is bound to: the account, the range and the grouping."""
        raw = json.dumps(
            [self.user_id, self.start_day.isoformat(), self.end_day.isoformat(), self.group_by]
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class UsageRow:
    day: dt.date | None
    agent_id: str
    member_id: str
    session_id: str
    debited_micros: int
    reversed_micros: int
    debits: int
    reversals: int

    @property
    def net_micros(self) -> int:
        return self.debited_micros - self.reversed_micros


def statement(group_by: Sequence[str], after: bool) -> str:
    """The page's statement; only names of ``KEYS`` ever enter it (no caller text)."""
    table = "usage_sessions" if "session" in group_by else "usage_daily"
    columns = [_COLUMN[k] for k in group_by]
    select = "".join(f"{c}, " for c in columns)
    where = "user_id = $1 AND day >= $2 AND day < $3"
    if after and columns:
        params = ", ".join(f"${i + 5}::{_CAST[k]}" for i, k in enumerate(group_by))
        where += f" AND ({', '.join(columns)}) > ({params})"
    tail = ""
    if columns:
        keys = ", ".join(columns)
        tail = f" GROUP BY {keys} ORDER BY {keys}"
    return (
        f"SELECT {select}"
        "coalesce(sum(debited_micros), 0)::bigint AS debited_micros, "
        "coalesce(sum(reversed_micros), 0)::bigint AS reversed_micros, "
        "coalesce(sum(debits), 0)::bigint AS debits, "
        "coalesce(sum(reversals), 0)::bigint AS reversals "
        f"FROM {table} WHERE {where}{tail} LIMIT $4"
    )


async def page(conn: Connection, query: UsageQuery, page_token: str) -> tuple[list[UsageRow], str]:
    after = decode_token(page_token, query) if page_token else None
    sql = statement(query.group_by, after is not None)
    args: list[object] = [query.user_id, query.start_day, query.end_day, query.page_size + 1]
    if after is not None:
        args.extend(after)
    found = await conn.fetch(sql, *args)
    rows = [
        UsageRow(
            day=r["day"] if "day" in query.group_by else None,
            agent_id=r["agent_id"] if "agent" in query.group_by else "",
            member_id=r["member_id"] if "member" in query.group_by else "",
            session_id=r["session_id"] if "session" in query.group_by else "",
            debited_micros=r["debited_micros"],
            reversed_micros=r["reversed_micros"],
            debits=r["debits"],
            reversals=r["reversals"],
        )
        for r in found
    ]
    if len(rows) <= query.page_size or not query.group_by:
        return rows[: query.page_size], ""
    rows = rows[: query.page_size]
    return rows, encode_token(query, rows[-1])


def _key_values(query: UsageQuery, row: UsageRow) -> list[str]:
    values = {
        "day": row.day.isoformat() if row.day else "",
        "agent": row.agent_id,
        "member": row.member_id,
        "session": row.session_id,
    }
    return [values[k] for k in query.group_by]


def encode_token(query: UsageQuery, last: UsageRow) -> str:
    return page_tokens.encode(_TOKEN_PREFIX, query.digest(), *_key_values(query, last))


def decode_token(token: str, query: UsageQuery) -> list[object]:
    """The last group's keys, as the statement's parameters; refused unless the token was
    issued for this very query (account, range and grouping)."""
    fields = page_tokens.decode(token, _TOKEN_PREFIX, limits.USAGE_PAGE_TOKEN_LENGTH_MAX)
    if not fields:
        raise errors.invalid("page_token", "page_token does not belong to this request")
    digest, *rest = fields
    keys = [k for k in rest if isinstance(k, str)]
    if digest != query.digest() or len(keys) != len(rest) or len(keys) != len(query.group_by):
        raise errors.invalid("page_token", "page_token does not belong to this request")
    values: list[object] = []
    for name, key in zip(query.group_by, keys, strict=True):
        if name == "day":
            try:
                values.append(dt.date.fromisoformat(key))
            except ValueError:
                raise errors.invalid("page_token", "page_token is malformed") from None
        else:
            values.append(key)
    return values


# The rollups as the history says they should be: VerifyLedger compares them with the
# tables, and the bench builds them this way after loading a history without triggers.
FROM_HISTORY: Final = """
SELECT d.user_id, cw_utc_day(d.created_at) AS day, coalesce(d.session_id, '') AS session_id,
       coalesce(d.agent_id, '') AS agent_id, coalesce(d.member_id, '') AS member_id,
       sum(CASE WHEN t.type = 'debit' THEN -t.amount_micros ELSE 0 END)::bigint
           AS debited_micros,
       sum(CASE WHEN t.type = 'reversal' THEN t.amount_micros ELSE 0 END)::bigint
           AS reversed_micros,
       count(*) FILTER (WHERE t.type = 'debit') AS debits,
       count(*) FILTER (WHERE t.type = 'reversal') AS reversals
FROM credit_transactions t
JOIN credit_transactions d ON d.user_id = t.user_id
 AND d.transaction_id = CASE WHEN t.type = 'debit' THEN t.transaction_id
                             ELSE t.related_transaction_id END
WHERE t.type IN ('debit', 'reversal')
GROUP BY 1, 2, 3, 4, 5
"""

REBUILD: Final = (
    "TRUNCATE usage_sessions, usage_daily",
    f"""INSERT INTO usage_sessions (user_id, day, session_id, agent_id, member_id,
        debited_micros, reversed_micros, debits, reversals)
    SELECT * FROM ({FROM_HISTORY}) h""",
    """INSERT INTO usage_daily (user_id, day, agent_id, member_id, debited_micros,
        reversed_micros, debits, reversals)
    SELECT user_id, day, agent_id, member_id, sum(debited_micros), sum(reversed_micros),
           sum(debits), sum(reversals)
    FROM usage_sessions GROUP BY 1, 2, 3, 4""",
)
