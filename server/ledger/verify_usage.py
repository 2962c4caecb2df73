"""VerifyLedger, invariant 10: the usage rollups equal the history.

GetUsage answers from ``usage_daily`` and ``usage_sessions`` alone; this rebuilds both from
the history (``usage.FROM_HISTORY``: every debit on its own day and group, every reversal on
its debit's) and reports each group whose figures differ, or that exists on one side only.
"""

from __future__ import annotations

from typing import Final

from creditwallet.server.db import Connection
from creditwallet.server.ledger import usage

INVARIANT: Final = 10

_FIGURES = ("debited_micros", "reversed_micros", "debits", "reversals")
_DIFFERS = " OR ".join(f"h.{f} IS DISTINCT FROM u.{f}" for f in _FIGURES)

_SESSIONS = f"""
SELECT coalesce(h.user_id, u.user_id) AS user_id, coalesce(h.day, u.day) AS day,
       coalesce(h.session_id, u.session_id) AS session_id,
       coalesce(h.agent_id, u.agent_id) AS agent_id,
       coalesce(h.member_id, u.member_id) AS member_id,
       h.debited_micros AS h_debited, h.reversed_micros AS h_reversed,
       u.debited_micros AS u_debited, u.reversed_micros AS u_reversed
FROM ({usage.FROM_HISTORY}) h
FULL JOIN usage_sessions u USING (user_id, day, session_id, agent_id, member_id)
WHERE {_DIFFERS}
LIMIT $1
"""

_DAILY = f"""
WITH h AS (
    SELECT user_id, day, agent_id, member_id, sum(debited_micros)::bigint AS debited_micros,
           sum(reversed_micros)::bigint AS reversed_micros, sum(debits)::bigint AS debits,
           sum(reversals)::bigint AS reversals
    FROM ({usage.FROM_HISTORY}) x GROUP BY 1, 2, 3, 4
)
SELECT coalesce(h.user_id, u.user_id) AS user_id, coalesce(h.day, u.day) AS day,
       '' AS session_id, coalesce(h.agent_id, u.agent_id) AS agent_id,
       coalesce(h.member_id, u.member_id) AS member_id,
       h.debited_micros AS h_debited, h.reversed_micros AS h_reversed,
       u.debited_micros AS u_debited, u.reversed_micros AS u_reversed
FROM h FULL JOIN usage_daily u USING (user_id, day, agent_id, member_id)
WHERE {_DIFFERS}
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for table, sql in (("usage_sessions", _SESSIONS), ("usage_daily", _DAILY)):
        for r in await conn.fetch(sql, cap):
            group = f"day={r['day']} agent={r['agent_id']!r} member={r['member_id']!r}"
            if table == "usage_sessions":
                group += f" session={r['session_id']!r}"
            found.append(
                (
                    r["user_id"],
                    f"{table} {group}: the history says debited={r['h_debited']} "
                    f"reversed={r['h_reversed']}, the rollup says debited={r['u_debited']} "
                    f"reversed={r['u_reversed']} (or the counts differ)",
                )
            )
    return found
