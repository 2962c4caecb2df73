"""Forged page tokens on every keyset listing: INVALID_ARGUMENT on ``page_token``, never
INTERNAL. A token is opaque but not secret (it is base64 JSON), so a caller can forge any
content: garbage, JSON nested past the parser's recursion limit, a list under the right
prefix whose strings PostgreSQL cannot store (a NUL, a lone surrogate)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Awaitable, Callable

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.events import store
from creditwallet.server.ledger import history, hold_pages, usage
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import events_pb2 as epb
from creditwallet.v1 import wallet_service_pb2 as wpb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.harness import new_user

Listing = Callable[[AsyncCreditWalletClient, str, str], Awaitable[object]]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _forged(prefix: str) -> dict[str, str]:
    nested = "[" * 1500  # 2,000 characters of base64: the parser recurses before it sees the end
    return {
        "garbage": "!!not base64!!",
        "not-json": _b64(b"\xff\xfe"),
        "nested": _b64(nested.encode()),
        "nested-under-prefix": _b64(f'["{prefix}", {nested}'.encode())[:2000],
        "not-a-list": _b64(json.dumps({"a": 1}).encode()),
        "empty-list": _b64(b"[]"),
        "wrong-prefix": _b64(json.dumps(["zz", "u", 1]).encode()),
        "nul": _b64(json.dumps([prefix, "a\u0000b", "x", 1]).encode()),
        "lone-surrogate": _b64(json.dumps([prefix, "\ud800", "x", 1]).encode()),
        "arity": _b64(json.dumps([prefix]).encode()),
    }


def _day(days: int) -> Timestamp:
    stamp = Timestamp()
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    stamp.FromDatetime(midnight + dt.timedelta(days=days))
    return stamp


async def _transactions(client: AsyncCreditWalletClient, user: str, token: str) -> object:
    return await client.wallet.ListTransactions(
        wpb.ListTransactionsRequest(user_id=user, page_token=token)
    )


async def _holds(client: AsyncCreditWalletClient, user: str, token: str) -> object:
    return await client.admin.ListHolds(apb.ListHoldsRequest(user_id=user, page_token=token))


async def _events(client: AsyncCreditWalletClient, user: str, token: str) -> object:
    return await client.admin.ListEvents(epb.ListEventsRequest(user_id=user, page_token=token))


async def _usage(client: AsyncCreditWalletClient, user: str, token: str) -> object:
    request = wpb.GetUsageRequest(
        user_id=user,
        start_time=_day(-7),
        end_time=_day(1),
        group_by=[wpb.USAGE_GROUP_BY_AGENT, wpb.USAGE_GROUP_BY_SESSION],
        page_token=token,
    )
    return await client.wallet.GetUsage(request)


LISTINGS: dict[str, tuple[Listing, str]] = {
    "ListTransactions": (_transactions, history._TOKEN_PREFIX),
    "ListHolds": (_holds, hold_pages._TOKEN_PREFIX),
    "ListEvents": (_events, store._TOKEN_PREFIX),
    "GetUsage": (_usage, usage._TOKEN_PREFIX),
}
CASES = [(name, kind) for name, (_, prefix) in LISTINGS.items() for kind in _forged(prefix)]


@pytest.mark.parametrize(("listing", "kind"), CASES)
async def test_a_forged_page_token_is_invalid_argument(
    admin: AsyncCreditWalletClient, listing: str, kind: str
) -> None:
    call, prefix = LISTINGS[listing]
    user = new_user()
    await admin.ensure_account(user)
    with pytest.raises(cw.InvalidArgument) as refused:
        await call(admin, user, _forged(prefix)[kind])
    assert refused.value.field == "page_token"
