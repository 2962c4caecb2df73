"""Fixtures of the client tests: the scripted server (``tests.client.scripted``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from creditwallet.client import rpc_table
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2

from tests.client.scripted import FakeServer, ScriptedWallet


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    wallet = ScriptedWallet()
    debit = grpc.unary_unary_rpc_method_handler(
        wallet.debit,
        request_deserializer=wallet_pb2.DebitRequest.FromString,
        response_serializer=wallet_pb2.DebitResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(rpc_table.WALLET_SERVICE, {"Debit": debit})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", wallet)
    finally:
        await server.stop(None)
