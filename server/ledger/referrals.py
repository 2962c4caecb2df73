"""Referral codes and rewards (docs/rewards.md).

- A code is 8 characters of ``CODE_ALPHABET`` (Crockford's base 32 without 0, 1, I, L, O
  and U: nothing that reads as another character), random, created on the first
  GetReferralCode and stable after. Input is upper-cased before it is checked.
- Redeeming (RedeemReferralCode, or EnsureAccount with a code when it creates the account)
  grants the referee ``REFEREE_REWARD_MICROS`` at once as a ``referral`` lot (90 days).
  It is refused with REFERRAL_NOT_ALLOWED and metadata ``rule``: ``own_code``,
  ``already_redeemed`` (one code per account, ever), ``account_too_old`` (created more
  than 7 days ago), ``already_paid`` (a paid purchase or period was recorded),
  ``referrer_cap`` (the referrer has earned ``REFERRER_REWARDS_MAX`` rewards: a new
  referee could never earn them one, so the code stops working).
- ``on_first_payment`` is called by the billing path, inside its transaction, whenever a
  paid purchase or subscription period is recorded for a user. It records the first
  payment (``paid_accounts``) and, if the user redeemed a code, grants the referrer
  ``REFERRER_REWARD_MICROS`` once per referee; when the referrer reached the cap in the
  meantime the referral is closed as ``capped`` without a reward.

At most once is enforced by the database: ``referrals`` has the referee as primary key
and each reward lot a grant_key unique per account (``referral:referee``,
``referral:referrer:<referee>``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from typing import Final

from creditwallet.core import limits
from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, lots
from creditwallet.server.ledger.types import Balances, default_expiry

CODE_ALPHABET: Final = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 8
REFEREE_REWARD_MICROS: Final = 10_000_000
REFERRER_REWARD_MICROS: Final = 25_000_000
REFERRER_REWARDS_MAX: Final = 50
REFEREE_ACCOUNT_AGE_MAX: Final = dt.timedelta(days=7)

_CODE_OF = "SELECT code, rewards_granted FROM referral_codes WHERE user_id = $1"

_NEW_CODE = """
INSERT INTO referral_codes (user_id, code, created_at) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING code, rewards_granted
"""

_OWNER_OF = "SELECT user_id, rewards_granted FROM referral_codes WHERE code = $1"

_REDEEMED = "SELECT code FROM referrals WHERE user_id = $1"

_PAID = "SELECT first_paid_at FROM paid_accounts WHERE user_id = $1"

_RECORD_REFERRAL = """
INSERT INTO referrals (user_id, referrer_user_id, code, redeemed_at, referee_transaction_id)
VALUES ($1, $2, $3, $4, $5)
"""

_RECORD_PAYMENT = """
INSERT INTO paid_accounts (user_id, first_paid_at) VALUES ($1, $2)
ON CONFLICT (user_id) DO NOTHING
"""

_OPEN_REFERRAL = """
SELECT referrer_user_id FROM referrals
WHERE user_id = $1 AND referrer_outcome IS NULL FOR UPDATE
"""

# The cap is checked and the count moved in one statement, under the row's lock.
_COUNT_REWARD = """
UPDATE referral_codes SET rewards_granted = rewards_granted + 1
WHERE user_id = $1 AND rewards_granted < $2
RETURNING rewards_granted
"""

_CLOSE_REFERRAL = """
UPDATE referrals SET referrer_outcome = $2, referrer_rewarded_at = $3,
    referrer_transaction_id = $4
WHERE user_id = $1 AND referrer_outcome IS NULL
"""


@dataclasses.dataclass(frozen=True)
class Redeemed:
    transaction_id: int
    granted_micros: int
    balances: Balances


def parse_code(value: str, field: str = "code") -> str:
    """Upper-case and check a code's shape; a malformed code is INVALID_ARGUMENT."""
    code = value.strip().upper()
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        raise errors.invalid(field, f"{field} must be {CODE_LENGTH} characters of {CODE_ALPHABET}")
    return code


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


async def code_of(conn: Connection, user_id: str, clock: Clock) -> tuple[str, int]:
    """The account's (code, rewards granted), creating the code on the first call."""
    for _ in range(limits.REFERRAL_CODE_ATTEMPTS_MAX):
        row = await conn.fetchrow(_CODE_OF, user_id)
        if row is not None:
            return row["code"], row["rewards_granted"]
        await accounts.read(conn, user_id)  # ACCOUNT_NOT_FOUND before anything is written
        # Nothing returned: a concurrent first call made this user's code (read it on
        # the next pass), or the random code is taken (draw another).
        row = await conn.fetchrow(_NEW_CODE, user_id, new_code(), clock.now())
        if row is not None:
            return row["code"], row["rewards_granted"]
    raise AssertionError(
        f"no free referral code for {user_id} in {limits.REFERRAL_CODE_ATTEMPTS_MAX} draws"
    )


async def redeem(
    conn: Connection, user_id: str, code: str, clock: Clock, request_id: str | None
) -> Redeemed:
    """Grant the referee's reward for ``code`` after checking every refusal rule."""
    locked = await accounts.lock(conn, user_id, clock)
    account, now = locked.account, locked.now
    owner = await conn.fetchrow(_OWNER_OF, code)
    if owner is None:
        raise errors.not_found("REFERRAL_CODE_NOT_FOUND", "no such referral code", code=code)
    referrer = owner["user_id"]
    if referrer == user_id:
        raise not_allowed("own_code", "an account cannot redeem its own code")
    if await conn.fetchval(_REDEEMED, user_id) is not None:
        raise not_allowed("already_redeemed", "the account already redeemed a code")
    if now - account.created_at > REFEREE_ACCOUNT_AGE_MAX:
        raise not_allowed("account_too_old", "only accounts up to 7 days old may redeem")
    if await conn.fetchval(_PAID, user_id) is not None:
        raise not_allowed("already_paid", "an account that has paid may not redeem")
    if owner["rewards_granted"] >= REFERRER_REWARDS_MAX:
        raise not_allowed("referrer_cap", "the code's owner has earned all its rewards")
    granted = await lots.grant(
        conn,
        account,
        source="referral",
        amount_micros=REFEREE_REWARD_MICROS,
        now=now,
        expires_at=default_expiry("referral", now),
        request_id=request_id,
        metadata={"role": "referee", "code": code, "referrer_user_id": referrer},
        grant_key="referral:referee",
    )
    await conn.execute(_RECORD_REFERRAL, user_id, referrer, code, now, granted.transaction_id)
    return Redeemed(granted.transaction_id, REFEREE_REWARD_MICROS, Balances.of(granted.account))


async def on_first_payment(conn: Connection, user_id: str, clock: Clock) -> int | None:
    """Reward the user's referrer, once, when the user's first payment is recorded.

    Safe to call on every payment: after the first, the referral is closed and this only
    reads. Returns the referrer's grant transaction when this call granted it.
    The caller usually holds the referee's account lock; the referrer's is taken second,
    out of user_id order, and a rare deadlock is retried by ``db.run_transaction``.
    """
    await conn.execute(_RECORD_PAYMENT, user_id, clock.now())
    referrer = await conn.fetchval(_OPEN_REFERRAL, user_id)
    if referrer is None:
        return None
    locked = await accounts.lock(conn, referrer, clock)
    account, now = locked.account, locked.now
    if await conn.fetchval(_COUNT_REWARD, referrer, REFERRER_REWARDS_MAX) is None:
        await conn.execute(_CLOSE_REFERRAL, user_id, "capped", now, None)
        return None
    granted = await lots.grant(
        conn,
        account,
        source="referral",
        amount_micros=REFERRER_REWARD_MICROS,
        now=now,
        expires_at=default_expiry("referral", now),
        metadata={"role": "referrer", "referee_user_id": user_id},
        grant_key=f"referral:referrer:{user_id}",
    )
    await conn.execute(_CLOSE_REFERRAL, user_id, "rewarded", now, granted.transaction_id)
    return granted.transaction_id


def not_allowed(rule: str, message: str) -> errors.LedgerError:
    return errors.precondition("REFERRAL_NOT_ALLOWED", message, rule=rule)
