"""AdminService: operators' grants, reversals, prices, statistics and the ledger check."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, validate
from creditwallet.server.db import Connection
from creditwallet.server.events.service import AdminEvents
from creditwallet.server.ledger import accounts, lots, pricing, reversals, stats, verify
from creditwallet.server.ledger.types import default_expiry
from creditwallet.server.services import Runtime
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import admin_service_pb2_grpc as agrpc

Context = grpc.aio.ServicerContext[Any, Any]


class AdminService(AdminEvents, agrpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def Grant(self, request: apb.GrantRequest, context: Context) -> apb.GrantResponse:
        user_id = validate.user_id(request.user_id)
        request_id = validate.request_id(request.request_id)
        source = convert.source_name(request.source)
        amount = validate.amount(request.amount_micros)
        metadata = validate.metadata(request.metadata)
        explicit_expiry = (
            validate.timestamp(request.expires_at, "expires_at")
            if request.HasField("expires_at")
            else None
        )

        async def work(conn: Connection, now: dt.datetime) -> apb.GrantResponse:
            expires_at = explicit_expiry
            if expires_at is None:
                expires_at = default_expiry(source, now)
            elif expires_at <= now:
                raise errors.invalid("expires_at", "expires_at must be in the future")
            account = await accounts.create_without_trial(conn, user_id, now)
            granted = await lots.grant(
                conn,
                account,
                source=source,
                amount_micros=amount,
                now=now,
                expires_at=expires_at,
                request_id=request_id,
                metadata=metadata,
            )
            lot = await conn.fetchrow(
                "SELECT lot_id, source, amount_micros, remaining_micros, granted_at, expires_at "
                "FROM credit_lots WHERE user_id = $1 AND lot_id = $2",
                user_id,
                granted.lot_id,
            )
            assert lot is not None
            return apb.GrantResponse(
                transaction_id=str(granted.transaction_id),
                lot=convert.lot(lot),
                available_micros=granted.account.available_micros,
            )

        return await self.rt.execute(
            scope=user_id,
            request_id=request_id,
            method="Grant",
            request=request,
            response_type=apb.GrantResponse,
            work=work,
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

        async def work(conn: Connection, now: dt.datetime) -> apb.ReverseDebitResponse:
            result = await reversals.reverse_debit(
                conn, user_id, debit_id, amount, request_id, metadata, now
            )
            return apb.ReverseDebitResponse(
                transaction_id=str(result.transaction_id),
                reversed_micros=result.reversed_micros,
                available_micros=result.available_micros,
            )

        return await self.rt.execute(
            scope=user_id,
            request_id=request_id,
            method="ReverseDebit",
            request=request,
            response_type=apb.ReverseDebitResponse,
            work=work,
        )

    async def SetAgentPrice(
        self, request: apb.SetAgentPriceRequest, context: Context
    ) -> apb.SetAgentPriceResponse:
        agent_id = validate.agent_id(request.agent_id)
        price = validate.amount(request.price_micros, "price_micros")
        unit = validate.text(request.unit or "run", "unit", limits.UNIT_LENGTH_MAX)
        row = await self.rt.write(
            lambda conn, now: pricing.set_price(conn, agent_id, price, unit, request.active, now)
        )
        return apb.SetAgentPriceResponse(price=convert.agent_price(row))

    async def ListAgentPrices(
        self, request: apb.ListAgentPricesRequest, context: Context
    ) -> apb.ListAgentPricesResponse:
        size = validate.page_size(request.page_size, limits.PRICES_PAGE_SIZE_DEFAULT)
        after = ""
        if request.page_token:
            after = validate.agent_id(request.page_token, "page_token")
        rows = await self.rt.read(lambda conn, now: pricing.page(conn, after, size + 1))
        token = rows[size - 1]["agent_id"] if len(rows) > size else ""
        return apb.ListAgentPricesResponse(
            prices=[convert.agent_price(r) for r in rows[:size]], next_page_token=token
        )

    async def GetStats(
        self, request: apb.GetStatsRequest, context: Context
    ) -> apb.GetStatsResponse:
        totals, last_day = await self.rt.read(lambda conn, now: stats.stats(conn))
        return apb.GetStatsResponse(
            total_users=totals["total_users"],
            total_credits_micros=stats.to_micros(totals["total_credits"]),
            avg_balance_micros=stats.to_micros(totals["avg_balance"]),
            last_day=[convert.type_total(r, stats.to_micros(r["total_amount"])) for r in last_day],
        )

    async def VerifyLedger(
        self, request: apb.VerifyLedgerRequest, context: Context
    ) -> apb.VerifyLedgerResponse:
        checked, violations = await self.rt.read(lambda conn, now: verify.verify(conn))
        return apb.VerifyLedgerResponse(
            ok=not violations,
            accounts_checked=checked,
            violations=[
                apb.LedgerViolation(invariant=v.invariant, user_id=v.user_id, detail=v.detail)
                for v in violations
            ],
        )
