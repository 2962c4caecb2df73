"""Referral codes on the real server: codes, both rewards, every refusal, the cap (docs/rewards.md).

The billing path (built elsewhere) calls ``referrals.on_first_payment`` inside its
transaction; ``pay`` stands in for it here, the same way, on the server's pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from creditwallet.client.errors import (
    AccountNotFound,
    CreditWalletError,
    InvalidArgument,
    ReferralCodeNotFound,
    ReferralNotAllowed,
    RequestIdReused,
)
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, referrals
from creditwallet.v1 import common_pb2

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def pay(ledger: Ledger, user: str) -> int | None:
    """What the billing path does when it records a paid purchase for ``user``."""

    async def work(conn: Connection) -> int | None:
        await accounts.lock(conn, user, ledger.clock)
        return await referrals.on_first_payment(conn, user, ledger.clock)

    return await db.run_transaction(ledger.pool, work)


async def referrer_with_code(admin: AsyncCreditWalletClient) -> tuple[str, str]:
    user = new_user()
    await admin.ensure_account(user)
    return user, (await admin.get_referral_code(user)).code


async def refused_rule(call: object) -> str:
    assert asyncio.iscoroutine(call)
    with pytest.raises(ReferralNotAllowed) as refused:
        await call
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    return refused.value.metadata["rule"]


async def test_code_is_stable_and_unambiguous(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user, code = await referrer_with_code(admin)
    assert len(code) == 8
    assert set(code) <= set(referrals.CODE_ALPHABET)
    assert not set(code) & set("01ILOU")
    again = await agent.get_referral_code(user)
    assert (again.code, again.rewards_granted) == (code, 0)
    with pytest.raises(AccountNotFound):
        await agent.get_referral_code(new_user())


async def test_concurrent_first_calls_agree_on_one_code(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    codes = await asyncio.gather(*(admin.get_referral_code(user) for _ in range(8)))
    assert len({c.code for c in codes}) == 1


async def test_referee_reward_then_referrer_reward_on_first_payment(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    referrer, code = await referrer_with_code(admin)
    referee = new_user()
    await admin.ensure_account(referee)
    redeemed = await agent.redeem_referral_code(referee, code.lower(), request_id="r-1")
    assert (redeemed.granted_micros, redeemed.available_micros) == (10 * CREDIT, 15 * CREDIT)
    balance = await agent.get_balance(referee)
    group = next(g for g in balance.lots if g.source == common_pb2.LOT_SOURCE_REFERRAL)
    lot = group.lots[0]
    assert lot.expires_at.ToDatetime() - lot.granted_at.ToDatetime() == dt.timedelta(days=90)
    # Nothing for the referrer until the referee pays; then once, however often billing calls.
    assert (await agent.get_balance(referrer)).available_micros == 5 * CREDIT
    assert await pay(ledger, referee) is not None
    assert await pay(ledger, referee) is None
    assert (await agent.get_balance(referrer)).available_micros == 30 * CREDIT
    assert (await agent.get_referral_code(referrer)).rewards_granted == 1
    # A replay of the redemption returns the stored response and grants nothing.
    replay = await agent.redeem_referral_code(referee, code.lower(), request_id="r-1")
    assert replay.replayed
    assert replay.transaction_id == redeemed.transaction_id
    with pytest.raises(RequestIdReused):
        await agent.redeem_referral_code(referee, "ABCDEFGH", request_id="r-1")
    assert (await agent.get_balance(referee)).available_micros == 15 * CREDIT


async def test_concurrent_payments_reward_the_referrer_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    referrer, code = await referrer_with_code(admin)
    referee = new_user()
    await admin.ensure_account(referee)
    await admin.redeem_referral_code(referee, code)
    results = await asyncio.gather(*(pay(ledger, referee) for _ in range(8)))
    assert len([r for r in results if r is not None]) == 1
    assert (await admin.get_balance(referrer)).available_micros == 30 * CREDIT


async def test_ensure_account_with_a_code(admin: AsyncCreditWalletClient) -> None:
    _, code = await referrer_with_code(admin)
    referee = new_user()
    created = await admin.ensure_account(referee, referral_code=code)
    assert created.created
    assert created.balance.available_micros == 15 * CREDIT
    again = await admin.ensure_account(referee, referral_code=code)
    assert not again.created
    assert again.balance.available_micros == 15 * CREDIT
    # A refused code refuses the creation: nothing is created, the caller may retry without.
    stranger = new_user()
    with pytest.raises(ReferralCodeNotFound):
        await admin.ensure_account(stranger, referral_code="ZZZZZZZZ")
    with pytest.raises(AccountNotFound):
        await admin.get_balance(stranger)
    with pytest.raises(InvalidArgument):
        await admin.ensure_account(stranger, referral_code="bad")


async def test_every_refusal_rule(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    referrer, code = await referrer_with_code(admin)
    _, other_code = await referrer_with_code(admin)
    assert await refused_rule(agent.redeem_referral_code(referrer, code)) == "own_code"

    twice = new_user()
    await admin.ensure_account(twice)
    await agent.redeem_referral_code(twice, code)
    assert await refused_rule(agent.redeem_referral_code(twice, other_code)) == "already_redeemed"
    assert await refused_rule(agent.redeem_referral_code(twice, code)) == "already_redeemed"

    paid = new_user()
    await admin.ensure_account(paid)
    await pay(ledger, paid)
    assert await refused_rule(agent.redeem_referral_code(paid, code)) == "already_paid"

    old = new_user()
    await admin.ensure_account(old)
    ledger.clock.advance(days=7)
    young = await agent.redeem_referral_code(old, code)  # exactly 7 days old: still allowed
    assert young.granted_micros == 10 * CREDIT
    older = new_user()
    await admin.ensure_account(older)
    ledger.clock.advance(days=7, seconds=1)
    assert await refused_rule(agent.redeem_referral_code(older, code)) == "account_too_old"


async def test_refusals_are_stored_under_the_request_id_but_malformed_codes_are_not(
    admin: AsyncCreditWalletClient,
) -> None:
    _, code = await referrer_with_code(admin)
    referee = new_user()
    await admin.ensure_account(referee)
    for malformed in ["", "ABCDEFG", "ABCDEFGI", "ABCDEFGH1"]:
        with pytest.raises(InvalidArgument):
            await admin.redeem_referral_code(referee, malformed, request_id="fix-me")
    assert (await admin.redeem_referral_code(referee, code, request_id="fix-me")).granted_micros
    other = new_user()
    await admin.ensure_account(other)
    for _ in range(2):
        with pytest.raises(ReferralCodeNotFound) as missing:
            await admin.redeem_referral_code(other, "ZZZZZZZZ", request_id="unknown")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(AccountNotFound):
        await admin.redeem_referral_code(new_user(), code)


async def test_concurrent_redemptions_grant_once(admin: AsyncCreditWalletClient) -> None:
    _, code = await referrer_with_code(admin)
    referee = new_user()
    await admin.ensure_account(referee)
    outcomes = await asyncio.gather(
        *(admin.redeem_referral_code(referee, code) for _ in range(8)), return_exceptions=True
    )
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, CreditWalletError)]
    assert len(granted) == 1
    assert len(refused) == 7
    assert {r.metadata["rule"] for r in refused} == {"already_redeemed"}
    assert (await admin.get_balance(referee)).available_micros == 15 * CREDIT


async def test_referrer_cap(ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
    referrer, code = await referrer_with_code(admin)
    referees = [new_user() for _ in range(referrals.REFERRER_REWARDS_MAX + 1)]
    for referee in referees:  # all redeem while the referrer has earned nothing yet
        await admin.ensure_account(referee, referral_code=code)
    rewarded = [await pay(ledger, referee) for referee in referees]
    assert rewarded[-1] is None
    assert None not in rewarded[:-1]
    info = await admin.get_referral_code(referrer)
    assert info.rewards_granted == referrals.REFERRER_REWARDS_MAX
    balance = await admin.get_balance(referrer)
    assert balance.available_micros == 5 * CREDIT + 50 * 25 * CREDIT
    async with ledger.pool.acquire() as conn:
        outcome = await conn.fetchval(
            "SELECT referrer_outcome FROM referrals WHERE user_id = $1", referees[-1]
        )
    assert outcome == "capped"
    late = new_user()
    await admin.ensure_account(late)
    assert await refused_rule(admin.redeem_referral_code(late, code)) == "referrer_cap"
