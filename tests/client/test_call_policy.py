"""The clients' call policy: the RPC table against the protos, retries of UNAVAILABLE only with
the identical request (observed on a real server), backoff, JSON mapping, request builders.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone

import grpc
import grpc.aio
import pytest
from creditwallet.client import builders, errors, rpc_table
from creditwallet.client.wallet import AsyncCreditWalletClient, CreditWalletClient
from creditwallet.core import limits, protojson
from creditwallet.v1 import admin_service_pb2, billing_service_pb2, common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2

from tests.client.scripted import INSUFFICIENT, TOKEN, UNAVAILABLE, Failure, FakeServer

# --- the RPC table, the policy, the JSON rendering -------------------------------------------


def test_rpc_table_matches_the_compiled_services() -> None:
    modules = (wallet_pb2, billing_service_pb2, admin_service_pb2)
    methods = {
        f"/{service.full_name}/{method.name}": method
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if not method.server_streaming  # StreamEvents: the async client's stream_events
    }
    assert sorted(methods) == sorted(rpc.path for rpc in rpc_table.ALL_RPCS)
    for rpc in rpc_table.ALL_RPCS:
        method = methods[rpc.path]
        assert method.input_type.full_name == rpc.request_type.DESCRIPTOR.full_name
        assert method.output_type.full_name == rpc.response_type.DESCRIPTOR.full_name


def test_only_unavailable_is_retried_and_only_while_retries_last() -> None:
    assert rpc_table.should_retry(grpc.StatusCode.UNAVAILABLE, 0, 3)
    assert not rpc_table.should_retry(grpc.StatusCode.UNAVAILABLE, 3, 3)
    for code in grpc.StatusCode:
        if code != grpc.StatusCode.UNAVAILABLE:
            assert not rpc_table.should_retry(code, 0, 3)


def test_backoff_grows_jittered_and_capped() -> None:
    rng = random.Random(7)
    for retries_done in range(12):
        ceiling = min(
            limits.CLIENT_RETRY_BACKOFF_INITIAL_SECONDS
            * limits.CLIENT_RETRY_BACKOFF_MULTIPLIER**retries_done,
            limits.CLIENT_RETRY_BACKOFF_MAX_SECONDS,
        )
        pause = rpc_table.backoff_seconds(retries_done, rng)
        assert ceiling / 2 <= pause <= ceiling <= limits.CLIENT_RETRY_BACKOFF_MAX_SECONDS


def test_json_is_the_protobuf_mapping_camel_case_and_int64_strings() -> None:
    response = wallet_pb2.DebitResponse(transaction_id="t", charged_micros=2**62)
    assert protojson.to_dict(response) == {
        "transactionId": "t",
        "chargedMicros": str(2**62),
        "availableMicros": "0",
        "replayed": False,
    }
    granted_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    lot = common_pb2.Lot(source=common_pb2.LOT_SOURCE_TOP_UP, amount_micros=5)
    lot.granted_at.FromDatetime(granted_at)
    as_dict = protojson.to_dict(lot)
    assert as_dict["source"] == "LOT_SOURCE_TOP_UP"
    assert as_dict["grantedAt"] == "2025-01-02T03:04:05Z"
    assert "expiresAt" not in as_dict


def test_builders_generate_one_request_id_and_respect_timezones() -> None:
    first, second = builders.debit("u", amount_micros=1), builders.debit("u", amount_micros=1)
    assert first.request_id
    assert first.request_id != second.request_id
    assert builders.debit("u", amount_micros=1, request_id="mine").request_id == "mine"
    assert not builders.debit("u", agent_id="a").HasField("quantity")
    paris = timezone(timedelta(hours=2))
    grant = builders.grant(
        "u", 1, common_pb2.LOT_SOURCE_PROMO, expires_at=datetime(2030, 1, 1, 2, tzinfo=paris)
    )
    assert grant.expires_at.ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone"):
        builders.grant("u", 1, common_pb2.LOT_SOURCE_PROMO, expires_at=datetime(2030, 1, 1))


async def test_async_client_retries_unavailable_with_the_identical_request(
    fake_server: FakeServer,
) -> None:
    fake_server.wallet.failures = [UNAVAILABLE, UNAVAILABLE]
    async with AsyncCreditWalletClient(fake_server.target, TOKEN) as client:
        response = await client.debit("alice", amount_micros=1_500_000)
    assert response.charged_micros == 1_500_000
    seen = fake_server.wallet.requests
    assert len(seen) == 3
    assert len({request.request_id for request in seen}) == 1
    assert all(request == seen[0] for request in seen)
    assert fake_server.wallet.authorizations == [f"Bearer {TOKEN}"] * 3


async def test_async_client_gives_up_after_its_retries(fake_server: FakeServer) -> None:
    fake_server.wallet.failures = [UNAVAILABLE] * 5
    async with AsyncCreditWalletClient(fake_server.target, TOKEN, retries=2) as client:
        with pytest.raises(errors.Unavailable):
            await client.wallet.Debit(wallet_pb2.DebitRequest(user_id="a", request_id="r"))
    assert [request.request_id for request in fake_server.wallet.requests] == ["r"] * 3


@pytest.mark.parametrize(
    "failure",
    [
        INSUFFICIENT,
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "user_id"}),
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", {}),
        (grpc.StatusCode.INTERNAL, "INTERNAL", {}),
        (grpc.StatusCode.UNKNOWN, "SOMETHING", {}),
    ],
)
async def test_async_client_does_not_retry_other_codes(
    fake_server: FakeServer, failure: Failure
) -> None:
    fake_server.wallet.failures = [failure]
    async with AsyncCreditWalletClient(fake_server.target, TOKEN) as client:
        with pytest.raises(errors.CreditWalletError) as raised:
            await client.debit("alice", amount_micros=1)
    assert (raised.value.code, raised.value.reason) == failure[:2]
    assert len(fake_server.wallet.requests) == 1


async def test_sync_client_retries_unavailable_with_the_identical_request(
    fake_server: FakeServer,
) -> None:
    fake_server.wallet.failures = [UNAVAILABLE, UNAVAILABLE]

    def debit() -> wallet_pb2.DebitResponse:
        with CreditWalletClient(fake_server.target, TOKEN) as client:
            return client.debit("alice", amount_micros=2, request_id="fixed")

    response = await asyncio.to_thread(debit)
    assert response.charged_micros == 2
    assert [request.request_id for request in fake_server.wallet.requests] == ["fixed"] * 3


def test_clients_never_show_the_token() -> None:
    client = CreditWalletClient("127.0.0.1:1", TOKEN)
    try:
        assert TOKEN not in repr(client)
        assert TOKEN not in repr(client._settings)
    finally:
        client.close()
