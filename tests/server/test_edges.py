"""The server's edges, attacked from outside on loopback: the gate refuses on headers, before
reading a body; bodies are bounded and deserialised only after authorisation; streams are
guarded as unary calls are; open services have their own budget; a hold or a debit of another
account is not found; tokens are labelled, and the label (never the token) is what is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.core.settings import Secret
from creditwallet.server import metrics
from creditwallet.server.config import Token
from creditwallet.server.interceptor import Gate
from creditwallet.v1 import wallet_service_pb2 as wpb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from tests.harness import TOKENS, Ledger, new_user

CREDIT = 1_000_000
DEBIT = "/creditwallet.v1.WalletService/Debit"
PROMPT_SECONDS = 3.0  # a refusal "at once": far below any read or deadline timeout
# Bytes that are no DebitRequest: a field 1 header announcing more bytes than follow.
GARBAGE = b"\x0a\xff\xff\xff\x0f" + b"\x00" * 16


def bearer(scope: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[scope]}"),)


def raw_unary(channel: grpc.aio.Channel, path: str = DEBIT) -> Any:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def never(stop: asyncio.Event) -> AsyncIterator[bytes]:
    """A request stream that sends headers and then nothing: a body that never comes."""
    await stop.wait()
    return
    yield b""  # pragma: no cover - makes this an async generator


@pytest_asyncio.fixture(loop_scope="session")
async def channel(ledger: Ledger) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(ledger.target) as opened:
        yield opened


async def test_garbage_body_is_unauthenticated_without_a_token_and_invalid_with_one(
    channel: grpc.aio.Channel,
) -> None:
    rpc = raw_unary(channel)
    assert await code_of(rpc(GARBAGE, timeout=PROMPT_SECONDS)) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(GARBAGE, timeout=PROMPT_SECONDS, metadata=bearer("agent"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error" not in (refused.value.details() or "")  # no exception named
    wrong = await code_of(rpc(GARBAGE, timeout=PROMPT_SECONDS, metadata=bearer("billing")))
    assert wrong == grpc.StatusCode.PERMISSION_DENIED


async def test_a_call_without_a_token_is_refused_before_its_body_arrives(
    channel: grpc.aio.Channel,
) -> None:
    """Headers and no body: refused at once, not after the body (or forever) as before."""
    stop = asyncio.Event()
    rpc = channel.stream_unary(DEBIT, request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    try:
        codes = await asyncio.gather(
            code_of(rpc(never(stop), timeout=30)),
            code_of(rpc(never(stop), timeout=30, metadata=(("authorization", "Bearer x" * 8),))),
        )
    finally:
        stop.set()
    assert list(codes) == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert time.monotonic() - started < PROMPT_SECONDS


async def test_an_authenticated_call_whose_body_never_comes_is_cut_off(
    channel: grpc.aio.Channel,
) -> None:
    stop = asyncio.Event()
    rpc = channel.stream_unary(DEBIT, request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    try:
        code = await code_of(rpc(never(stop), timeout=60, metadata=bearer("agent")))
    finally:
        stop.set()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < limits.GRPC_REQUEST_READ_TIMEOUT_SECONDS + PROMPT_SECONDS


async def test_oversized_bodies_and_headers_are_refused_and_debits_go_on(
    channel: grpc.aio.Channel, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await agent.ensure_account(user)
    # The attack's 330,000-entry map: about 3.8 MB.
    huge = wpb.DebitRequest(user_id=user, request_id="huge", amount_micros=1)
    huge.metadata.update({f"k{i}": "v" for i in range(330_000)})
    body = huge.SerializeToString()
    assert len(body) > limits.GRPC_RECEIVE_BYTES_MAX
    rpc = raw_unary(channel)
    assert await code_of(rpc(body, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    authed = await code_of(rpc(body, timeout=10, metadata=bearer("agent")))
    assert authed == grpc.StatusCode.RESOURCE_EXHAUSTED
    big_header = (("x-pad", "p" * (limits.GRPC_METADATA_BYTES_ABSOLUTE_MAX + 1024)),)
    padded = await code_of(rpc(GARBAGE, timeout=10, metadata=bearer("agent") + big_header))
    assert padded != grpc.StatusCode.OK
    reply = await agent.debit(user, amount_micros=CREDIT)
    assert reply.charged_micros == CREDIT


async def test_open_services_have_their_own_budget(
    ledger: Ledger, agent: AsyncCreditWalletClient
) -> None:
    """More Watch streams than the budget: the extra are refused at once, Debit goes on."""
    user = new_user()
    await agent.ensure_account(user)
    async with grpc.aio.insecure_channel(ledger.target) as opened:
        stub = health_pb2_grpc.HealthStub(opened)
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            for _ in range(limits.GRPC_OPEN_CALLS_MAX + 8)
        ]
        try:
            firsts = await asyncio.gather(*(_first(w) for w in watches))
            assert firsts.count("SERVING") == limits.GRPC_OPEN_CALLS_MAX
            assert firsts.count("RESOURCE_EXHAUSTED") == 8
            reply = await agent.debit(user, amount_micros=CREDIT)
            assert reply.charged_micros == CREDIT
        finally:
            for watch in watches:
                watch.cancel()
    for _ in range(50):  # the budget is given back as the streams end
        if await _check(ledger) == "SERVING":
            break
        await asyncio.sleep(0.1)
    assert await _check(ledger) == "SERVING"


async def _first(watch: Any) -> str:
    try:
        reply = await watch.read()
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _check(ledger: Ledger) -> str:
    async with grpc.aio.insecure_channel(ledger.target) as opened:
        try:
            reply = await health_pb2_grpc.HealthStub(opened).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=PROMPT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# A server-streaming method of a guarded service, as the coming event stream will be: the gate
# must guard it as it guards unary calls, whatever its name.
STREAM = "/creditwallet.v1.WalletService/StreamProbe"
SLOW = "/creditwallet.v1.WalletService/SlowProbe"


@pytest_asyncio.fixture(loop_scope="session")
async def probe_server() -> AsyncIterator[tuple[str, list[str]]]:
    served: list[str] = []

    async def stream(request: wpb.GetBalanceRequest, context: Any) -> AsyncIterator[Any]:
        served.append(request.user_id)
        for i in range(3):
            yield wpb.GetBalanceResponse(available_micros=i)

    async def slow(request: wpb.GetBalanceRequest, context: Any) -> Any:
        await asyncio.sleep(60)
        return wpb.GetBalanceResponse()

    async def huge(request: wpb.GetBalanceRequest, context: Any) -> Any:
        served.append(request.user_id)
        return wpb.ListTransactionsResponse(next_page_token="x" * limits.GRPC_MESSAGE_BYTES_MAX)

    handlers = grpc.method_handlers_generic_handler(
        "creditwallet.v1.WalletService",
        {
            "HugeProbe": grpc.unary_unary_rpc_method_handler(
                huge,
                request_deserializer=wpb.GetBalanceRequest.FromString,
                response_serializer=wpb.ListTransactionsResponse.SerializeToString,
            ),
            "StreamProbe": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=wpb.GetBalanceRequest.FromString,
                response_serializer=wpb.GetBalanceResponse.SerializeToString,
            ),
            "SlowProbe": grpc.unary_unary_rpc_method_handler(
                slow,
                request_deserializer=wpb.GetBalanceRequest.FromString,
                response_serializer=wpb.GetBalanceResponse.SerializeToString,
            ),
        },
    )
    tokens = [Token(scope, scope, Secret(token)) for scope, token in TOKENS.items()]
    server = grpc.aio.server(interceptors=[Gate(tokens, deadline_seconds=0.5)])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", served
    await server.stop(0)


async def _stream_codes(target: str, body: bytes, metadata: Any) -> tuple[str, int]:
    async with grpc.aio.insecure_channel(target) as opened:
        call = opened.unary_stream(STREAM, request_serializer=None, response_deserializer=None)(
            body, timeout=PROMPT_SECONDS, metadata=metadata
        )
        items = 0
        try:
            async for _ in call:
                items += 1
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, items
    return "OK", items


async def test_server_streaming_methods_are_guarded_like_unary_ones(
    probe_server: tuple[str, list[str]],
) -> None:
    target, served = probe_server
    good = wpb.GetBalanceRequest(user_id="streamer").SerializeToString()
    assert await _stream_codes(target, good, ()) == ("UNAUTHENTICATED", 0)
    assert await _stream_codes(target, good, bearer("billing")) == ("PERMISSION_DENIED", 0)
    assert await _stream_codes(target, GARBAGE, bearer("agent")) == ("INVALID_ARGUMENT", 0)
    assert served == []  # the method never ran for any of them
    assert await _stream_codes(target, good, bearer("agent")) == ("OK", 3)
    assert served == ["streamer"]


async def test_a_call_without_a_deadline_gets_the_servers(
    probe_server: tuple[str, list[str]],
) -> None:
    target, _ = probe_server
    async with grpc.aio.insecure_channel(target) as opened:
        rpc = opened.unary_unary(SLOW, request_serializer=None, response_deserializer=None)
        started = time.monotonic()
        code = await code_of(rpc(b"", metadata=bearer("agent")))  # no deadline of its own
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < PROMPT_SECONDS


async def test_a_hold_of_another_account_is_not_found(admin: AsyncCreditWalletClient) -> None:
    owner, other = new_user(), new_user()
    await admin.ensure_account(owner)
    await admin.ensure_account(other)
    hold = await admin.authorize(owner, amount_micros=2 * CREDIT, ttl_seconds=60)
    with pytest.raises(cw.HoldNotFound):
        await admin.capture(other, hold.hold_id)
    with pytest.raises(cw.HoldNotFound):
        await admin.void(other, hold.hold_id)
    # An account that does not exist learns nothing either.
    with pytest.raises(cw.NotFound):
        await admin.capture(new_user(), hold.hold_id)
    state = await admin.get_balance(owner)
    assert state.held_micros == 2 * CREDIT  # untouched
    captured = await admin.capture(owner, hold.hold_id, amount_micros=CREDIT)
    assert captured.charged_micros == CREDIT
    spent = await admin.debit(owner, amount_micros=CREDIT)
    with pytest.raises(cw.TransactionNotFound):
        await admin.reverse_debit(other, spent.transaction_id)


async def test_several_labelled_tokens_per_scope_and_the_label_is_what_is_counted(
    ledger: Ledger,
) -> None:
    from creditwallet.server import app, config

    runtime_a, runtime_b = "ra-" + "1" * 40, "rb-" + "2" * 40
    settings = config.ServerConfig.from_env(
        {
            "AGENT_TOKENS": f"runtime-a:{runtime_a},runtime-b:{runtime_b}",
            "BILLING_TOKEN": TOKENS["billing"],
            "ADMIN_TOKEN": TOKENS["admin"],
        }
    )
    running = await app.start(settings, dsn=ledger.dsn, address="127.0.0.1:0")
    target = f"127.0.0.1:{running.port}"
    try:
        for token in (runtime_a, runtime_b):
            async with AsyncCreditWalletClient(target, token, retries=0) as client:
                await client.ensure_account(new_user())
        # The old shared token of this scope is revoked by leaving it out.
        async with AsyncCreditWalletClient(target, TOKENS["agent"], retries=0) as client:
            with pytest.raises(cw.Unauthenticated):
                await client.ensure_account(new_user())
    finally:
        await running.stop(grace_seconds=1.0)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'creditwallet_rpcs_by_caller_total{caller="runtime-a",code="OK"}' in text
    assert 'creditwallet_rpcs_by_caller_total{caller="runtime-b",code="OK"}' in text
    assert 'caller="-",code="UNAUTHENTICATED"' in text
    for token in (runtime_a, runtime_b, *TOKENS.values()):
        assert token not in text


async def test_an_answer_too_large_to_send_is_logged_and_internal(
    probe_server: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC could not send it and would only log that it could not, as for a caller gone."""
    target, served = probe_server
    body = wpb.GetBalanceRequest(user_id="huge").SerializeToString()
    async with grpc.aio.insecure_channel(target) as opened:
        rpc = raw_unary(opened, "/creditwallet.v1.WalletService/HugeProbe")
        assert await code_of(rpc(body, timeout=10, metadata=bearer("agent"))) == (
            grpc.StatusCode.INTERNAL
        )
    assert served == ["huge"]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in logged] == ["answer larger than GRPC_MESSAGE_BYTES_MAX"]
    assert logged[0].__dict__["method"] == "HugeProbe"


def _reason(error: grpc.aio.AioRpcError) -> str:
    return cw.from_rpc_error(error).reason


async def test_open_services_refuse_a_large_message_with_its_reason(ledger: Ledger) -> None:
    over = limits.GRPC_RECEIVE_BYTES_MAX + 10
    check_request = health_pb2.HealthCheckRequest(service="s" * over)
    reflect_request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="x" * over)
    async with grpc.aio.insecure_channel(ledger.target) as opened:
        check = health_pb2_grpc.HealthStub(opened).Check
        with pytest.raises(grpc.aio.AioRpcError) as checked:
            await check(check_request, timeout=10)
        reflect = reflection_pb2_grpc.ServerReflectionStub(opened).ServerReflectionInfo
        with pytest.raises(grpc.aio.AioRpcError) as reflected:
            async for _ in reflect(iter([reflect_request]), timeout=10):
                pass
    for refused in (checked.value, reflected.value):
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(refused) == "MESSAGE_TOO_LARGE"
