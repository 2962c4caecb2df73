"""VerifyLedger, invariant 3 for rewards: each streak milestone and referral reward once.

The constraints already refuse a second milestone row per (user, streak, milestone), a
second referral per referee and a second lot per grant_key; this checks after the fact
that the reward lots and the records that justify them agree one to one, and that each
referrer's reward count is the number of rewards it was granted.
Lots granted by an operator with source streak/referral carry no such grant_key and are
not rewards, so they are left out.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

# Streak reward lots (grant_key "streak:<start>:<days>") <-> streak_milestones rows.
_STREAK = """
SELECT coalesce(l.user_id, m.user_id) AS user_id,
       'streak lot ' || coalesce(l.lot_id::text, '-') || ' / milestone transaction '
           || coalesce(m.transaction_id::text, '-') || ' have no counterpart' AS detail
FROM (SELECT user_id, lot_id, transaction_id FROM credit_lots
      WHERE grant_key LIKE 'streak:%') l
FULL JOIN streak_milestones m
    ON m.user_id = l.user_id AND m.transaction_id = l.transaction_id
WHERE l.user_id IS NULL OR m.user_id IS NULL
LIMIT $1
"""

# Referee lots (grant_key "referral:referee") <-> referrals rows.
_REFEREE = """
SELECT coalesce(l.user_id, r.user_id) AS user_id,
       'referee lot ' || coalesce(l.lot_id::text, '-') || ' / referral of '
           || coalesce(r.user_id, '-') || ' have no counterpart' AS detail
FROM (SELECT user_id, lot_id, transaction_id FROM credit_lots
      WHERE grant_key = 'referral:referee') l
FULL JOIN referrals r ON r.user_id = l.user_id AND r.referee_transaction_id = l.transaction_id
WHERE l.user_id IS NULL OR r.user_id IS NULL
LIMIT $1
"""

# Referrer lots (grant_key "referral:referrer:<referee>") <-> rewarded referrals rows.
_REFERRER = """
SELECT coalesce(l.user_id, r.referrer_user_id) AS user_id,
       'referrer lot ' || coalesce(l.lot_id::text, '-') || ' / rewarded referral of '
           || coalesce(r.user_id, '-') || ' have no counterpart' AS detail
FROM (SELECT user_id, lot_id, transaction_id, grant_key FROM credit_lots
      WHERE grant_key LIKE 'referral:referrer:%') l
FULL JOIN (SELECT * FROM referrals WHERE referrer_outcome = 'rewarded') r
    ON r.referrer_user_id = l.user_id AND r.referrer_transaction_id = l.transaction_id
   AND l.grant_key = 'referral:referrer:' || r.user_id
WHERE l.user_id IS NULL OR r.user_id IS NULL
LIMIT $1
"""

_REWARD_COUNTS = """
SELECT c.user_id, 'rewards_granted ' || c.rewards_granted || ' but '
           || count(r.user_id) || ' rewarded referrals' AS detail
FROM referral_codes c
LEFT JOIN referrals r ON r.referrer_user_id = c.user_id AND r.referrer_outcome = 'rewarded'
GROUP BY c.user_id, c.rewards_granted
HAVING c.rewards_granted <> count(r.user_id)
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    """(user_id, detail) of every reward not matched one to one by its record."""
    found: list[tuple[str, str]] = []
    for query in (_STREAK, _REFEREE, _REFERRER, _REWARD_COUNTS):
        found += [(r["user_id"], r["detail"]) for r in await conn.fetch(query, cap)]
    return found[:cap]
