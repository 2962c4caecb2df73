"""WalletService: the agent runtimes' RPCs. Validate -> ledger -> convert, nothing more."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, metrics, validate
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
    subscriptions,
)
from creditwallet.server.services import Runtime
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

        async def work(conn: Connection, now: dt.datetime) -> bool:
            _, created = await accounts.ensure(conn, user_id, now, self.rt.trial_credits_micros)
            # Only the creating call redeems: a refusal rolls the creation back, and a
            # later call (a retry after success included) changes nothing.
            if created and code is not None:
                await referrals.redeem(conn, user_id, code, now, request_id=None)
            return created

        created = await self.rt.write(work)
        balance = await self._balance(user_id)
        return wpb.EnsureAccountResponse(
            created=created,
            balance=wpb.Balance(
                available_micros=balance.available_micros,
                held_micros=balance.held_micros,
                debt_micros=balance.debt_micros,
                lots=balance.lots,
            ),
        )

    async def GetBalance(
        self, request: wpb.GetBalanceRequest, context: Context
    ) -> wpb.GetBalanceResponse:
        return await self._balance(validate.user_id(request.user_id))

    async def _balance(self, user_id: str) -> wpb.GetBalanceResponse:
        async def read(conn: Connection, now: dt.datetime) -> wpb.GetBalanceResponse | None:
            account = await accounts.read(conn, user_id)
            if account.sweep_due(now):
                return None
            lots = await balances.live_lots(conn, user_id, now)
            return wpb.GetBalanceResponse(
                user_id=user_id,
                available_micros=account.available_micros,
                held_micros=account.held_micros,
                debt_micros=account.debt_micros,
                lots=convert.lot_groups(lots),
                subscription=convert.subscription(await subscriptions.for_user(conn, user_id)),
                streak=convert.streak(await streaks.read(conn, user_id, now)),
            )

        # One snapshot, so the lots always add up to the balance beside them.
        response = await self.rt.read(read, snapshot=True)
        if response is None:
            await self.rt.write(lambda conn, now: accounts.lock(conn, user_id, now))  # sweeps
            response = await self.rt.read(read, snapshot=True)
        assert response is not None, "a sweep leaves nothing due at the same instant"
        return response

    async def Debit(self, request: wpb.DebitRequest, context: Context) -> wpb.DebitResponse:
        cmd = debit.DebitCommand(
            user_id=validate.user_id(request.user_id),
            request_id=validate.request_id(request.request_id),
            session_id=validate.text(
                request.session_id, "session_id", limits.SESSION_ID_LENGTH_MAX
            ),
            metadata=validate.metadata(request.metadata),
            **_cost(request),
        )

        def respond(result: debit.DebitResult) -> wpb.DebitResponse:
            return wpb.DebitResponse(
                transaction_id=str(result.transaction_id),
                charged_micros=result.charged_micros,
                available_micros=result.available_micros,
                streak_reward=convert.streak_reward(result.reward),
            )

        response = await self.rt.execute_debit(cmd, request, wpb.DebitResponse, respond)
        if not response.replayed:
            metrics.DEBITS.inc()
            metrics.DEBITED_MICROS.inc(response.charged_micros)
        return response

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
            **_cost(request),
        )

        async def work(conn: Connection, now: dt.datetime) -> wpb.AuthorizeResponse:
            result = await holds.authorize(conn, cmd, now)
            return wpb.AuthorizeResponse(
                hold_id=str(result.hold_id),
                expires_at=convert.timestamp(result.expires_at),
                held_micros=result.held_micros,
                available_micros=result.available_micros,
            )

        return await self.rt.execute(
            scope=cmd.user_id,
            request_id=cmd.request_id,
            method="Authorize",
            request=request,
            response_type=wpb.AuthorizeResponse,
            work=work,
        )

    async def Capture(self, request: wpb.CaptureRequest, context: Context) -> wpb.CaptureResponse:
        hold_id = validate.hold_id(request.hold_id)
        request_id = validate.request_id(request.request_id)
        amount = (
            validate.amount(request.amount_micros) if request.HasField("amount_micros") else None
        )
        user_id = await self.rt.read(lambda conn, now: holds.hold_owner(conn, hold_id))

        async def work(conn: Connection, now: dt.datetime) -> wpb.CaptureResponse:
            result = await holds.capture(conn, user_id, hold_id, amount, request_id, now)
            return wpb.CaptureResponse(
                transaction_id=str(result.transaction_id),
                charged_micros=result.charged_micros,
                released_micros=result.released_micros,
                available_micros=result.available_micros,
                streak_reward=convert.streak_reward(result.reward),
            )

        return await self.rt.execute(
            scope=user_id,
            request_id=request_id,
            method="Capture",
            request=request,
            response_type=wpb.CaptureResponse,
            work=work,
        )

    async def Void(self, request: wpb.VoidRequest, context: Context) -> wpb.VoidResponse:
        hold_id = validate.hold_id(request.hold_id)
        request_id = validate.request_id(request.request_id)
        user_id = await self.rt.read(lambda conn, now: holds.hold_owner(conn, hold_id))

        async def work(conn: Connection, now: dt.datetime) -> wpb.VoidResponse:
            result = await holds.void(conn, user_id, hold_id, now)
            return wpb.VoidResponse(
                released_micros=result.released_micros, available_micros=result.available_micros
            )

        return await self.rt.execute(
            scope=user_id,
            request_id=request_id,
            method="Void",
            request=request,
            response_type=wpb.VoidResponse,
            work=work,
        )

    async def ListTransactions(
        self, request: wpb.ListTransactionsRequest, context: Context
    ) -> wpb.ListTransactionsResponse:
        user_id = validate.user_id(request.user_id)
        size = validate.page_size(request.page_size, limits.PAGE_SIZE_DEFAULT)
        type_ = convert.type_name(request.type)

        async def read(conn: Connection, now: dt.datetime) -> wpb.ListTransactionsResponse:
            await accounts.read(conn, user_id)
            rows, token = await history.page(conn, user_id, type_, size, request.page_token)
            return wpb.ListTransactionsResponse(
                transactions=[convert.transaction(r) for r in rows], next_page_token=token
            )

        return await self.rt.read(read)

    async def GetStreak(
        self, request: wpb.GetStreakRequest, context: Context
    ) -> wpb.GetStreakResponse:
        user_id = validate.user_id(request.user_id)

        async def read(conn: Connection, now: dt.datetime) -> wpb.GetStreakResponse:
            await accounts.read(conn, user_id)
            return wpb.GetStreakResponse(
                streak=convert.streak(await streaks.read(conn, user_id, now))
            )

        return await self.rt.read(read)

    async def GetReferralCode(
        self, request: wpb.GetReferralCodeRequest, context: Context
    ) -> wpb.GetReferralCodeResponse:
        user_id = validate.user_id(request.user_id)

        async def work(conn: Connection, now: dt.datetime) -> wpb.GetReferralCodeResponse:
            code, rewards = await referrals.code_of(conn, user_id, now)
            return wpb.GetReferralCodeResponse(code=code, rewards_granted=rewards)

        return await self.rt.write(work)

    async def RedeemReferralCode(
        self, request: wpb.RedeemReferralCodeRequest, context: Context
    ) -> wpb.RedeemReferralCodeResponse:
        user_id = validate.user_id(request.user_id)
        request_id = validate.request_id(request.request_id)
        code = referrals.parse_code(request.code)

        async def work(conn: Connection, now: dt.datetime) -> wpb.RedeemReferralCodeResponse:
            result = await referrals.redeem(conn, user_id, code, now, request_id)
            return wpb.RedeemReferralCodeResponse(
                transaction_id=str(result.transaction_id),
                granted_micros=result.granted_micros,
                available_micros=result.account.available_micros,
            )

        return await self.rt.execute(
            scope=user_id,
            request_id=request_id,
            method="RedeemReferralCode",
            request=request,
            response_type=wpb.RedeemReferralCodeResponse,
            work=work,
        )


def _cost(request: wpb.DebitRequest | wpb.AuthorizeRequest) -> dict[str, Any]:
    quantity = request.quantity if request.HasField("quantity") else None
    agent, qty, amount = validate.cost(request.agent_id, quantity, request.amount_micros)
    return {"agent_id": agent, "quantity": qty, "amount_micros": amount}
