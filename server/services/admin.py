"""AdminService: operators' grants, reversals, prices, statistics and the ledger check."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, validate
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events.service import AdminEvents
from creditwallet.server.ledger import (
    accounts,
    hold_pages,
    lots,
    members,
    overdraft,
    periods,
    pricing,
    reversals,
    rollover,
    stats,
    verify,
)
from creditwallet.server.ledger.types import Balances, Lot, default_expiry
from creditwallet.server.services import Runtime, guard
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import admin_service_pb2_grpc as agrpc

Context = grpc.aio.ServicerContext[Any, Any]

_LOT = f"SELECT {Lot.COLUMNS} FROM credit_lots WHERE user_id = $1 AND lot_id = $2"


@dataclasses.dataclass(frozen=True)
class GrantResult:
    transaction_id: int
    lot: Lot
    balances: Balances


class AdminService(AdminEvents, agrpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def Grant(self, request: apb.GrantRequest, context: Context) -> apb.GrantResponse:
        user_id = validate.user_id(request.user_id)
        request_id = validate.request_id(request.request_id)
        source = convert.source_name(request.source)
        amount = validate.amount(request.amount_micros)
        metadata = validate.metadata(request.metadata)
        priority = validate.priority(request.priority if request.HasField("priority") else None)
        agent_ids = validate.agent_ids(request.agent_ids)
        explicit_expiry = (
            validate.timestamp(request.expires_at, "expires_at")
            if request.HasField("expires_at")
            else None
        )

        async def work(conn: Connection, clock: Clock) -> GrantResult:
            if request.create_account:
                locked = await accounts.create_without_trial(conn, user_id, clock)
            else:
                locked = await accounts.lock(conn, user_id, clock)
            now = locked.now
            expires_at = explicit_expiry
            if expires_at is None:
                expires_at = default_expiry(source, now)
            elif expires_at <= now:
                raise errors.invalid("expires_at", "expires_at must be in the future")
            granted = await lots.grant(
                conn,
                locked.account,
                source=source,
                amount_micros=amount,
                now=now,
                expires_at=expires_at,
                request_id=request_id,
                metadata=metadata,
                priority=priority,
                agent_ids=agent_ids,
            )
            row = await conn.fetchrow(_LOT, user_id, granted.lot_id)
            assert row is not None
            return GrantResult(
                granted.transaction_id, Lot.from_row(row), Balances.of(granted.account)
            )

        outcome = await self.rt.execute(
            guard(user_id, request_id, "Grant", request), GrantResult, work
        )
        result = outcome.result
        return apb.GrantResponse(
            transaction_id=str(result.transaction_id),
            lot=convert.lot(result.lot),
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
        )

    async def ReverseDebit(
        self, request: apb.ReverseDebitRequest, context: Context
    ) -> apb.ReverseDebitResponse:
        user_id = validate.user_id(request.user_id)
        request_id = validate.request_id(request.request_id)
        debit_id = validate.transaction_id(request.transaction_id)
        amount = (
            validate.amount(request.amount_micros) if request.HasField("amount_micros") else None
        )
        metadata = validate.metadata(request.metadata)
        outcome = await self.rt.execute(
            guard(user_id, request_id, "ReverseDebit", request),
            reversals.ReversalResult,
            lambda conn, clock: reversals.reverse_debit(
                conn, user_id, debit_id, amount, request_id, metadata, clock
            ),
        )
        result = outcome.result
        return apb.ReverseDebitResponse(
            transaction_id=str(result.transaction_id),
            reversed_micros=result.reversed_micros,
            available_micros=result.balances.available_micros,
            replayed=outcome.replayed,
        )

    async def SetAgentPrice(
        self, request: apb.SetAgentPriceRequest, context: Context
    ) -> apb.SetAgentPriceResponse:
        agent_id = validate.agent_id(request.agent_id)
        price = validate.amount(request.price_micros, "price_micros")
        unit = validate.text(request.unit or "run", "unit", limits.UNIT_LENGTH_MAX)
        row = await self.rt.write(
            lambda conn, clock: pricing.set_price(
                conn, agent_id, price, unit, request.active, clock.now()
            )
        )
        return apb.SetAgentPriceResponse(price=convert.agent_price(row))

    async def ListAgentPrices(
        self, request: apb.ListAgentPricesRequest, context: Context
    ) -> apb.ListAgentPricesResponse:
        size = validate.page_size(request.page_size, limits.PRICES_PAGE_SIZE_DEFAULT)
        after = ""
        if request.page_token:
            after = validate.agent_id(request.page_token, "page_token")
        rows = await self.rt.read(lambda conn, clock: pricing.page(conn, after, size + 1))
        token = rows[size - 1].agent_id if len(rows) > size else ""
        return apb.ListAgentPricesResponse(
            prices=[convert.agent_price(r) for r in rows[:size]], next_page_token=token
        )

    async def GetStats(
        self, request: apb.GetStatsRequest, context: Context
    ) -> apb.GetStatsResponse:
        return convert.stats_reply(await self.rt.read(lambda conn, clock: stats.stats(conn)))

    async def VerifyLedger(
        self, request: apb.VerifyLedgerRequest, context: Context
    ) -> apb.VerifyLedgerResponse:
        checked, violations = await self.rt.read(lambda conn, clock: verify.verify(conn))
        return apb.VerifyLedgerResponse(
            ok=not violations,
            accounts_checked=checked,
            violations=[
                apb.LedgerViolation(invariant=v.invariant, user_id=v.user_id, detail=v.detail)
                for v in violations
            ],
        )

    async def SetOverdraftLimit(
        self, request: apb.SetOverdraftLimitRequest, context: Context
    ) -> apb.SetOverdraftLimitResponse:
        user_id = validate.user_id(request.user_id)
        limit = validate.overdraft_limit(request.limit_micros)
        account = await self.rt.write(
            lambda conn, clock: overdraft.set_limit(conn, user_id, limit, clock)
        )
        return apb.SetOverdraftLimitResponse(
            limit_micros=account.overdraft_limit_micros,
            available_micros=account.available_micros,
            debt_micros=account.debt_micros,
        )

    async def SetMember(
        self, request: apb.SetMemberRequest, context: Context
    ) -> apb.SetMemberResponse:
        cmd = members.MemberCommand(
            user_id=validate.user_id(request.user_id),
            member_id=validate.identifier(
                request.member_id, "member_id", limits.MEMBER_ID_LENGTH_MAX
            ),
            cap_micros=validate.amount(request.cap_micros, "cap_micros"),
            cap_period=convert.period_name(request.cap_period),
            active=request.active,
        )
        member = await self.rt.write(lambda conn, clock: members.set_member(conn, cmd, clock))
        return apb.SetMemberResponse(member=convert.member(member))

    async def ListMembers(
        self, request: apb.ListMembersRequest, context: Context
    ) -> apb.ListMembersResponse:
        user_id = validate.user_id(request.user_id)
        size = validate.page_size(request.page_size, limits.MEMBERS_PAGE_SIZE_DEFAULT)
        after = ""
        if request.page_token:
            after = validate.identifier(
                request.page_token, "page_token", limits.MEMBER_ID_LENGTH_MAX
            )
        found, token = await self.rt.read(
            lambda conn, clock: members.page(conn, user_id, after, size, clock)
        )
        return apb.ListMembersResponse(
            members=[convert.member(m) for m in found], next_page_token=token
        )

    async def GetRolloverProgress(
        self, request: apb.GetRolloverProgressRequest, context: Context
    ) -> apb.GetRolloverProgressResponse:
        async def work(conn: Connection, clock: Clock) -> apb.GetRolloverProgressResponse:
            period = periods.parse_month(request.period, clock.now())
            row = await conn.fetchrow(rollover.PROGRESS, period, clock.now())
            assert row is not None
            return apb.GetRolloverProgressResponse(
                period=period,
                accounts_total=row["done"] + row["due"],
                accounts_rolled_over=row["done"],
            )

        return await self.rt.read(work)

    async def ListHolds(
        self, request: apb.ListHoldsRequest, context: Context
    ) -> apb.ListHoldsResponse:
        user_id = validate.user_id(request.user_id)
        size = validate.page_size(request.page_size, limits.PAGE_SIZE_DEFAULT)

        async def read(conn: Connection, clock: Clock) -> apb.ListHoldsResponse:
            account = await accounts.read(conn, user_id)
            rows, token = await hold_pages.page(
                conn, user_id, accounts.ledger_time(clock, account), size, request.page_token
            )
            return apb.ListHoldsResponse(
                holds=[convert.hold(r) for r in rows], next_page_token=token
            )

        return await self.rt.read(read)

    async def GetDailyTotals(
        self, request: apb.GetDailyTotalsRequest, context: Context
    ) -> apb.GetDailyTotalsResponse:
        days = validate.bounded(
            request.days, "days", limits.DAILY_TOTALS_DAYS_DEFAULT, limits.DAILY_TOTALS_DAYS_MAX
        )
        top = validate.bounded(
            request.top_agents, "top_agents", limits.TOP_AGENTS_DEFAULT, limits.TOP_AGENTS_MAX
        )
        totals = await self.rt.read(
            lambda conn, clock: stats.daily_totals(conn, clock.now(), days, top)
        )
        return convert.daily_totals_reply(totals)
