"""WalletService: the agent runtimes' RPCs. Validate -> ledger -> convert, nothing more."""

from __future__ import annotations

from typing import Any

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, metrics, page_tokens, validate
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events.service import WalletEvents
from creditwallet.server.ledger import (
    accounts,
    balances,
    debit,
    history,
    holds,
    referrals,
    streaks,
    usage,
)
from creditwallet.server.services import Runtime, batch, guard
from creditwallet.v1 import wallet_service_pb2 as wpb
from creditwallet.v1 import wallet_service_pb2_grpc as wgrpc

Context = grpc.aio.ServicerContext[Any, Any]


class WalletService(WalletEvents, wgrpc.WalletServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def EnsureAccount(
        self, request: wpb.EnsureAccountRequest, context: Context
    ) -> wpb.EnsureAccountResponse:
        user_id = validate.user_id(request.user_id)
        code = (
            referrals.parse_code(request.referral_code, "referral_code")
            if request.referral_code
            else None
        )

        async def work(conn: Connection, clock: Clock) -> bool:
            _, created = await accounts.ensure(conn, user_id, clock, self.rt.trial_credits_micros)
            # Only the creating call redeems: a refusal rolls the creation back, and a
            # later call (a retry after success included) changes nothing.
            if created and code is not None:
                await referrals.redeem(conn, user_id, code, clock, request_id=None)
            return created

        created = await self.rt.write(work)
        view = convert.balance(await balances.balance(self.rt.pool, self.rt.clock, user_id))
        return wpb.EnsureAccountResponse(
            created=created,
            balance=wpb.Balance(
                available_micros=view.available_micros,
                held_micros=view.held_micros,
                debt_micros=view.debt_micros,
                lots=view.lots,
            ),
        )

    async def GetBalance(
        self, request: wpb.GetBalanceRequest, context: Context
    ) -> wpb.GetBalanceResponse:
        user_id = validate.user_id(request.user_id)
        agent_id = validate.agent_id(request.agent_id) if request.agent_id else None
        as_of = validate.timestamp(request.as_of, "as_of") if request.HasField("as_of") else None
        return convert.balance(
            await balances.balance(
                self.rt.pool, self.rt.clock, user_id, agent_id=agent_id, as_of=as_of
            )
        )

    async def Debit(self, request: wpb.DebitRequest, context: Context) -> wpb.DebitResponse:
        return await self._debit(request)

    async def BatchDebit(
        self, request: wpb.BatchDebitRequest, context: Context
    ) -> wpb.BatchDebitResponse:
        return await batch.batch_debit(request, self._debit)

    async def _debit(self, request: wpb.DebitRequest) -> wpb.DebitResponse:
        cmd = debit.DebitCommand(
            user_id=validate.user_id(request.user_id),
            request_id=validate.request_id(request.request_id),
            session_id=validate.text(
                request.session_id, "session_id", limits.SESSION_ID_LENGTH_MAX
            ),
            metadata=validate.metadata(request.metadata),
            for_agent_id=_for_agent(request),
            member_id=validate.optional_member_id(request.member_id),
            **_cost(request),
        )
        outcome = await self.rt.debit(cmd, request)
        result = outcome.result
        if not outcome.replayed:
            metrics.DEBITS.inc()
            metrics.DEBITED_MICROS.inc(result.charged_micros)
        return wpb.DebitResponse(
            transaction_id=str(result.transaction_id),
            charged_micros=result.charged_micros,
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
            streak_reward=convert.streak_reward(result.reward),
        )

    async def Authorize(
        self, request: wpb.AuthorizeRequest, context: Context
    ) -> wpb.AuthorizeResponse:
        cmd = holds.AuthorizeCommand(
            user_id=validate.user_id(request.user_id),
            request_id=validate.request_id(request.request_id),
            session_id=validate.text(
                request.session_id, "session_id", limits.SESSION_ID_LENGTH_MAX
            ),
            metadata=validate.metadata(request.metadata),
            ttl_seconds=validate.ttl_seconds(request.ttl_seconds),
            for_agent_id=_for_agent(request),
            member_id=validate.optional_member_id(request.member_id),
            **_cost(request),
        )
        outcome = await self.rt.execute(
            guard(cmd.user_id, cmd.request_id, "Authorize", request),
            holds.AuthorizeResult,
            lambda conn, clock: holds.authorize(conn, cmd, clock),
        )
        result = outcome.result
        return wpb.AuthorizeResponse(
            hold_id=str(result.hold_id),
            expires_at=convert.timestamp(result.expires_at),
            held_micros=result.held_micros,
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
        )

    async def Capture(self, request: wpb.CaptureRequest, context: Context) -> wpb.CaptureResponse:
        user_id = validate.user_id(request.user_id)
        hold_id = validate.hold_id(request.hold_id)
        request_id = validate.request_id(request.request_id)
        amount = (
            validate.amount(request.amount_micros) if request.HasField("amount_micros") else None
        )
        outcome = await self.rt.execute(
            guard(user_id, request_id, "Capture", request),
            holds.CaptureResult,
            lambda conn, clock: holds.capture(conn, user_id, hold_id, amount, request_id, clock),
        )
        result = outcome.result
        return wpb.CaptureResponse(
            transaction_id=str(result.transaction_id),
            charged_micros=result.charged_micros,
            released_micros=result.released_micros,
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
            streak_reward=convert.streak_reward(result.reward),
        )

    async def Void(self, request: wpb.VoidRequest, context: Context) -> wpb.VoidResponse:
        user_id = validate.user_id(request.user_id)
        hold_id = validate.hold_id(request.hold_id)
        request_id = validate.request_id(request.request_id)
        outcome = await self.rt.execute(
            guard(user_id, request_id, "Void", request),
            holds.VoidResult,
            lambda conn, clock: holds.void(conn, user_id, hold_id, clock),
        )
        return wpb.VoidResponse(
            released_micros=outcome.result.released_micros,
            available_micros=outcome.result.balances.available_micros,
            replayed=outcome.replayed,
        )

    async def ListTransactions(
        self, request: wpb.ListTransactionsRequest, context: Context
    ) -> wpb.ListTransactionsResponse:
        user_id = validate.user_id(request.user_id)
        size = validate.page_size(request.page_size, limits.PAGE_SIZE_DEFAULT)
        type_ = convert.type_name(request.type)

        async def read(conn: Connection, clock: Clock) -> wpb.ListTransactionsResponse:
            await accounts.read(conn, user_id)
            rows, token = await history.page(conn, user_id, type_, size, request.page_token)
            listed = [convert.transaction(r) for r in rows]
            kept = page_tokens.fitting(listed)
            if kept < len(listed):
                token = history.encode_token(user_id, type_, rows[kept - 1].transaction_id)
            return wpb.ListTransactionsResponse(transactions=listed[:kept], next_page_token=token)

        return await self.rt.read(read)

    async def GetUsage(
        self, request: wpb.GetUsageRequest, context: Context
    ) -> wpb.GetUsageResponse:
        query = _usage_query(request)

        async def read(conn: Connection, clock: Clock) -> wpb.GetUsageResponse:
            await accounts.read(conn, query.user_id)
            rows, token = await usage.page(conn, query, request.page_token)
            return wpb.GetUsageResponse(
                user_id=query.user_id,
                groups=[convert.usage_group(r) for r in rows],
                next_page_token=token,
            )

        return await self.rt.read(read)

    async def GetStreak(
        self, request: wpb.GetStreakRequest, context: Context
    ) -> wpb.GetStreakResponse:
        user_id = validate.user_id(request.user_id)

        async def read(conn: Connection, clock: Clock) -> wpb.GetStreakResponse:
            account = await accounts.read(conn, user_id)
            view = await streaks.read(conn, user_id, accounts.ledger_time(clock, account))
            return wpb.GetStreakResponse(streak=convert.streak(view))

        return await self.rt.read(read)

    async def GetReferralCode(
        self, request: wpb.GetReferralCodeRequest, context: Context
    ) -> wpb.GetReferralCodeResponse:
        user_id = validate.user_id(request.user_id)
        code, rewards = await self.rt.write(
            lambda conn, clock: referrals.code_of(conn, user_id, clock)
        )
        return wpb.GetReferralCodeResponse(code=code, rewards_granted=rewards)

    async def RedeemReferralCode(
        self, request: wpb.RedeemReferralCodeRequest, context: Context
    ) -> wpb.RedeemReferralCodeResponse:
        user_id = validate.user_id(request.user_id)
        request_id = validate.request_id(request.request_id)
        code = referrals.parse_code(request.code)
        outcome = await self.rt.execute(
            guard(user_id, request_id, "RedeemReferralCode", request),
            referrals.Redeemed,
            lambda conn, clock: referrals.redeem(conn, user_id, code, clock, request_id),
        )
        result = outcome.result
        return wpb.RedeemReferralCodeResponse(
            transaction_id=str(result.transaction_id),
            granted_micros=result.granted_micros,
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
        )


def _for_agent(request: wpb.DebitRequest | wpb.AuthorizeRequest) -> str | None:
    """The agent an explicit amount pays for; with agent_id the agent is that one."""
    if not request.for_agent_id:
        return None
    if request.agent_id:
        raise errors.invalid(
            "for_agent_id", "for_agent_id goes with amount_micros; agent_id already names one"
        )
    return validate.agent_id(request.for_agent_id, "for_agent_id")


def _cost(request: wpb.DebitRequest | wpb.AuthorizeRequest) -> dict[str, Any]:
    quantity = request.quantity if request.HasField("quantity") else None
    agent, qty, amount = validate.cost(request.agent_id, quantity, request.amount_micros)
    return {"agent_id": agent, "quantity": qty, "amount_micros": amount}


_GROUP_KEYS: dict[int, str] = {
    wpb.USAGE_GROUP_BY_DAY: "day",
    wpb.USAGE_GROUP_BY_AGENT: "agent",
    wpb.USAGE_GROUP_BY_MEMBER: "member",
    wpb.USAGE_GROUP_BY_SESSION: "session",
}


def _usage_query(request: wpb.GetUsageRequest) -> usage.UsageQuery:
    user_id = validate.user_id(request.user_id)
    for field in ("start_time", "end_time"):
        if not request.HasField(field):
            raise errors.invalid(field, f"{field} is required")
    start = validate.utc_day(request.start_time, "start_time")
    end = validate.utc_day(request.end_time, "end_time")
    if not 0 < (end - start).days <= limits.USAGE_RANGE_DAYS_MAX:
        raise errors.invalid(
            "end_time",
            f"end_time must be 1 to {limits.USAGE_RANGE_DAYS_MAX} days after start_time",
        )
    chosen = set()
    for value in request.group_by:
        if value not in _GROUP_KEYS:
            raise errors.invalid("group_by", "group_by must hold known UsageGroupBy values")
        if _GROUP_KEYS[value] in chosen:
            raise errors.invalid("group_by", "group_by names a key twice")
        chosen.add(_GROUP_KEYS[value])
    return usage.UsageQuery(
        user_id=user_id,
        start_day=start,
        end_day=end,
        group_by=tuple(k for k in usage.KEYS if k in chosen),
        page_size=validate.bounded(
            request.page_size,
            "page_size",
            limits.USAGE_PAGE_SIZE_DEFAULT,
            limits.USAGE_PAGE_SIZE_MAX,
        ),
    )
