"""Request builders behind the clients' keyword methods (``client.debit(user_id, ...)``).

Why builders: the sync and async clients expose the same keyword methods. Each method's
signature, defaults and docstring are written once, here, as a function returning the request
message; the clients bind a builder to its ``Rpc`` (see ``clients.wallet``) and inherit its
signature through ``ParamSpec``, so mypy checks every call of both clients against it.

A builder runs once per method call, before the first attempt: a generated ``request_id`` is
therefore fixed for every retry of that call, which is what makes retrying safe. A caller who
needs to retry across process restarts passes its own ``request_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime

from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import billing_service_pb2 as billing_pb2
from creditwallet.v1 import common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.timestamp_pb2 import Timestamp


def new_request_id() -> str:
    """A fresh idempotency key: a random UUID, unique without coordination."""
    return str(uuid.uuid4())


def ensure_account(user_id: str, *, referral_code: str = "") -> wallet_pb2.EnsureAccountRequest:
    """Creates the account (with its trial lot) on the first call; later calls change nothing."""
    return wallet_pb2.EnsureAccountRequest(user_id=user_id, referral_code=referral_code)


def get_balance(
    user_id: str, *, agent_id: str = "", as_of: datetime | None = None
) -> wallet_pb2.GetBalanceRequest:
    """Reads available, held and debt micros, the live lots, the subscription and the streak.

    ``agent_id``: also what is available for debits for that agent (the lots that apply to
    it). ``as_of`` (timezone-aware, not in the future): the figures and lots at that moment.
    """
    return wallet_pb2.GetBalanceRequest(
        user_id=user_id,
        agent_id=agent_id,
        as_of=timestamp(as_of) if as_of is not None else None,
    )


def debit(
    user_id: str,
    *,
    agent_id: str | None = None,
    quantity: int | None = None,
    amount_micros: int | None = None,
    request_id: str | None = None,
    session_id: str = "",
    metadata: Mapping[str, str] | None = None,
    for_agent_id: str = "",
    member_id: str = "",
) -> wallet_pb2.DebitRequest:
    """Spends credits: ``agent_id`` (times ``quantity``, default 1) or ``amount_micros``, not both.

    All or nothing, never overdrawing beyond the account's overdraft limit; a new uuid4
    ``request_id`` unless one is given. ``for_agent_id`` names the agent an ``amount_micros``
    pays for, so lots restricted to that agent apply. ``member_id`` names the team member that
    spends (counted against its cap).
    """
    return wallet_pb2.DebitRequest(
        user_id=user_id,
        request_id=request_id or new_request_id(),
        agent_id=agent_id or "",
        quantity=quantity,
        amount_micros=amount_micros or 0,
        session_id=session_id,
        metadata=metadata,
        for_agent_id=for_agent_id,
        member_id=member_id,
    )


def batch_debit(debits: Iterable[wallet_pb2.DebitRequest]) -> wallet_pb2.BatchDebitRequest:
    """Up to 1,000 debits in one call (build each with ``debit``), each applied, replayed or
    refused on its own: the reply's ``results`` hold one outcome per debit, in order, and a
    refused one never fails the others (``errors.from_batch_error`` gives its exception).
    """
    return wallet_pb2.BatchDebitRequest(requests=list(debits))


def authorize(
    user_id: str,
    *,
    agent_id: str | None = None,
    quantity: int | None = None,
    amount_micros: int | None = None,
    ttl_seconds: int = 0,
    request_id: str | None = None,
    session_id: str = "",
    metadata: Mapping[str, str] | None = None,
    for_agent_id: str = "",
    member_id: str = "",
) -> wallet_pb2.AuthorizeRequest:
    """Places a hold like ``debit`` would charge; ``ttl_seconds`` 0 means the server's 900.

    A hold reserves credits of the lots that apply to its agent and never overdraws.
    ``member_id``: the held amount counts against that member's cap until captured or voided.
    """
    return wallet_pb2.AuthorizeRequest(
        user_id=user_id,
        request_id=request_id or new_request_id(),
        agent_id=agent_id or "",
        quantity=quantity,
        amount_micros=amount_micros or 0,
        session_id=session_id,
        metadata=metadata,
        ttl_seconds=ttl_seconds,
        for_agent_id=for_agent_id,
        member_id=member_id,
    )


def capture(
    user_id: str, hold_id: str, *, amount_micros: int | None = None, request_id: str | None = None
) -> wallet_pb2.CaptureRequest:
    """Debits up to the held amount (all of it when ``amount_micros`` is None), frees the rest.

    ``user_id`` is the account that placed the hold: another account's hold is HOLD_NOT_FOUND.
    """
    return wallet_pb2.CaptureRequest(
        user_id=user_id,
        hold_id=hold_id,
        request_id=request_id or new_request_id(),
        amount_micros=amount_micros,
    )


def void(user_id: str, hold_id: str, *, request_id: str | None = None) -> wallet_pb2.VoidRequest:
    """Releases a hold of ``user_id``'s account (another account's hold is HOLD_NOT_FOUND)."""
    return wallet_pb2.VoidRequest(
        user_id=user_id, hold_id=hold_id, request_id=request_id or new_request_id()
    )


def list_transactions(
    user_id: str,
    *,
    page_size: int = 0,
    page_token: str = "",
    type: common_pb2.TransactionType.ValueType = common_pb2.TRANSACTION_TYPE_UNSPECIFIED,
) -> wallet_pb2.ListTransactionsRequest:
    """One page of history, newest first; ``page_size`` 0 means the server's 50."""
    return wallet_pb2.ListTransactionsRequest(
        user_id=user_id, page_size=page_size, page_token=page_token, type=type
    )


def get_usage(
    user_id: str,
    *,
    start_time: datetime,
    end_time: datetime,
    group_by: Iterable[str | wallet_pb2.UsageGroupBy.ValueType] = (),
    page_size: int = 0,
    page_token: str = "",
) -> wallet_pb2.GetUsageRequest:
    """Credits spent (net of reversals) and counts per group over whole UTC days.

    ``start_time`` and ``end_time`` (excluded) are UTC midnights; ``group_by`` names keys
    (``"day"``, ``"agent"``, ``"member"``, ``"session"``, or ``UsageGroupBy`` values), none
    for one total; ``page_size`` 0 means the server's 100.
    """
    return wallet_pb2.GetUsageRequest(
        user_id=user_id,
        start_time=timestamp(start_time),
        end_time=timestamp(end_time),
        group_by=[usage_group_by(g) for g in group_by],
        page_size=page_size,
        page_token=page_token,
    )


def usage_group_by(
    key: str | wallet_pb2.UsageGroupBy.ValueType,
) -> wallet_pb2.UsageGroupBy.ValueType:
    """``"agent"`` (any case) or ``USAGE_GROUP_BY_AGENT`` as the enum value."""
    if isinstance(key, str):
        return wallet_pb2.UsageGroupBy.Value("USAGE_GROUP_BY_" + key.strip().upper())
    return key


def get_streak(user_id: str) -> wallet_pb2.GetStreakRequest:
    """Reads the Smart Streaks state."""
    return wallet_pb2.GetStreakRequest(user_id=user_id)


def get_referral_code(user_id: str) -> wallet_pb2.GetReferralCodeRequest:
    """Returns the user's stable referral code, creating it on the first call."""
    return wallet_pb2.GetReferralCodeRequest(user_id=user_id)


def redeem_referral_code(
    user_id: str, code: str, *, request_id: str | None = None
) -> wallet_pb2.RedeemReferralCodeRequest:
    """Redeems another user's referral code for ``user_id`` (a new account)."""
    return wallet_pb2.RedeemReferralCodeRequest(
        user_id=user_id, code=code, request_id=request_id or new_request_id()
    )


def rollover(period: str = "") -> billing_pb2.RolloverRequest:
    """Brings every account up to date for ``period`` (YYYY-MM; empty: the current UTC month)."""
    return billing_pb2.RolloverRequest(period=period)


def grant(
    user_id: str,
    amount_micros: int,
    source: common_pb2.LotSource.ValueType,
    *,
    expires_at: datetime | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    create_account: bool = False,
    priority: int | None = None,
    agent_ids: Iterable[str] = (),
) -> admin_pb2.GrantRequest:
    """Grants a new lot; ``expires_at`` (timezone-aware) None means the source's default.

    The account must exist (``AccountNotFound`` otherwise) unless ``create_account`` is true,
    which creates it without a trial lot. ``priority`` (0-100, lower burns first) None means
    the default 50; ``agent_ids`` restricts the lot to debits for those agents.
    """
    return admin_pb2.GrantRequest(
        user_id=user_id,
        request_id=request_id or new_request_id(),
        source=source,
        amount_micros=amount_micros,
        expires_at=timestamp(expires_at) if expires_at is not None else None,
        metadata=metadata,
        create_account=create_account,
        priority=priority,
        agent_ids=list(agent_ids),
    )


def reverse_debit(
    user_id: str,
    transaction_id: str,
    *,
    amount_micros: int | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> admin_pb2.ReverseDebitRequest:
    """Gives a debit's credits back to their lots; all not yet reversed when amount is None."""
    return admin_pb2.ReverseDebitRequest(
        user_id=user_id,
        request_id=request_id or new_request_id(),
        transaction_id=transaction_id,
        amount_micros=amount_micros,
        metadata=metadata,
    )


def set_agent_price(
    agent_id: str, price_micros: int, *, unit: str = "", active: bool = True
) -> admin_pb2.SetAgentPriceRequest:
    """Creates or replaces an agent's price per unit (naturally idempotent)."""
    return admin_pb2.SetAgentPriceRequest(
        agent_id=agent_id, price_micros=price_micros, unit=unit, active=active
    )


def list_agent_prices(
    *, page_size: int = 0, page_token: str = ""
) -> admin_pb2.ListAgentPricesRequest:
    """One page of prices by agent_id; ``page_size`` 0 means the server's 100."""
    return admin_pb2.ListAgentPricesRequest(page_size=page_size, page_token=page_token)


def set_overdraft_limit(user_id: str, limit_micros: int) -> admin_pb2.SetOverdraftLimitRequest:
    """Sets how far below zero the account's debits may go, as debt (0: not at all)."""
    return admin_pb2.SetOverdraftLimitRequest(user_id=user_id, limit_micros=limit_micros)


def set_member(
    user_id: str,
    member_id: str,
    *,
    cap_micros: int,
    cap_period: str | admin_pb2.MemberCapPeriod.ValueType = "day",
    active: bool = True,
) -> admin_pb2.SetMemberRequest:
    """Creates or replaces a team member: its cap per ``"day"`` or ``"month"`` (UTC), active."""
    period = (
        admin_pb2.MemberCapPeriod.Value("MEMBER_CAP_PERIOD_" + cap_period.strip().upper())
        if isinstance(cap_period, str)
        else cap_period
    )
    return admin_pb2.SetMemberRequest(
        user_id=user_id,
        member_id=member_id,
        cap_micros=cap_micros,
        cap_period=period,
        active=active,
    )


def list_members(
    user_id: str, *, page_size: int = 0, page_token: str = ""
) -> admin_pb2.ListMembersRequest:
    """One page of an account's members by member_id; ``page_size`` 0 means the server's 100."""
    return admin_pb2.ListMembersRequest(user_id=user_id, page_size=page_size, page_token=page_token)


def get_stats() -> admin_pb2.GetStatsRequest:
    """The operators' two summary queries."""
    return admin_pb2.GetStatsRequest()


def verify_ledger() -> admin_pb2.VerifyLedgerRequest:
    """Checks the ledger's invariants (docs/design.md) over the whole database."""
    return admin_pb2.VerifyLedgerRequest()


def get_rollover_progress(period: str = "") -> admin_pb2.GetRolloverProgressRequest:
    """Accounts rolled over for ``period`` (YYYY-MM; empty: this UTC month) out of all."""
    return admin_pb2.GetRolloverProgressRequest(period=period)


def list_holds(
    user_id: str, *, page_size: int = 0, page_token: str = ""
) -> admin_pb2.ListHoldsRequest:
    """One page of the account's pending holds, soonest expiry first; 0 means the server's 50."""
    return admin_pb2.ListHoldsRequest(user_id=user_id, page_size=page_size, page_token=page_token)


def get_daily_totals(*, days: int = 0, top_agents: int = 0) -> admin_pb2.GetDailyTotalsRequest:
    """Ledger-wide totals per UTC day and type, and the top agents by spend (0: 30 days, 10)."""
    return admin_pb2.GetDailyTotalsRequest(days=days, top_agents=top_agents)


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of a timezone-aware datetime; a naive one is refused as ambiguous."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime needs a timezone (e.g. UTC): {moment.isoformat()}")
    result = Timestamp()
    result.FromDatetime(moment)
    return result
