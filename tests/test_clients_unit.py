"""Unit tests of ``clients/`` that need no ledger: units, error mapping, retry policy, CLI.

The retry tests run a real grpc.aio server on 127.0.0.1 (port 0) whose ``Debit`` fails as
scripted and records every request it sees, because the property that matters — a retry sends
the identical message, so the same request_id — is only observable on the wire.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import grpc
import grpc.aio
import pytest
from creditwallet.client import builders, errors, rpc_table
from creditwallet.client.arguments import build_parser
from creditwallet.client.cli import COMMANDS, main
from creditwallet.client.wallet import AsyncCreditWalletClient, CreditWalletClient
from creditwallet.core import limits, protojson
from creditwallet.core.units import INT64_MAX, format_credits, parse_credits
from creditwallet.v1 import admin_service_pb2, billing_service_pb2, common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

TOKEN = "unit-test-token"
DETAILS_KEY = "grpc-status-details-bin"

# --- credits <-> micros ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("1.5", 1_500_000),
        ("0.1", 100_000),
        ("0.000001", 1),
        ("2.50", 2_500_000),
        ("123456789.123456", 123_456_789_123_456),
        ("9223372036854.775807", INT64_MAX),
    ],
)
def test_parse_credits_is_exact(text: str, micros: int) -> None:
    parsed = parse_credits(text)
    assert parsed == micros
    assert type(parsed) is int


@pytest.mark.parametrize(
    "text",
    [
        "1.0000001",  # seven decimals: refused, never rounded
        "0.0000005",
        "9223372036854.775808",  # one micro beyond int64
        "99999999999999999999",
        "-1",
        "+1",
        "1e3",
        "NaN",
        "Infinity",
        "",
        ".5",
        "1.",
        " 1",
        "1_000",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to us
    ],
)
def test_parse_credits_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"credits|int64"):
        parse_credits(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (2_500_000, "2.5"),
        (0, "0"),
        (1, "0.000001"),
        (10_000_000, "10"),
        (1_230_000, "1.23"),
        (-1_500_000, "-1.5"),
        (INT64_MAX, "9223372036854.775807"),
    ],
)
def test_format_credits_strips_trailing_zeros(micros: int, text: str) -> None:
    assert format_credits(micros) == text


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_credits_round_trip_exactly(micros: int) -> None:
    assert parse_credits(format_credits(micros)) == micros


# --- from_rpc_error -------------------------------------------------------------------------


def rpc_error(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
    *,
    domain: str = "creditwallet",
    status_message: str | None = None,
) -> grpc.aio.AioRpcError:
    """An AioRpcError as the server's abort produces it, with an optional ErrorInfo."""
    trailing = grpc.aio.Metadata()
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
        status = status_pb2.Status(
            code=code.value[0],
            message=message if status_message is None else status_message,
            details=[detail],
        )
        trailing.add(DETAILS_KEY, status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message, None)


REASONS = [
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", errors.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", errors.AccountNotFound),
    (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND", errors.AgentNotFound),
    (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND", errors.HoldNotFound),
    (grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND", errors.TransactionNotFound),
    (grpc.StatusCode.NOT_FOUND, "REFERRAL_CODE_NOT_FOUND", errors.ReferralCodeNotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_DISABLED", errors.AgentDisabled),
    (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", errors.HoldExpired),
    (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_FINALIZED", errors.HoldFinalized),
    (grpc.StatusCode.FAILED_PRECONDITION, "REFERRAL_NOT_ALLOWED", errors.ReferralNotAllowed),
    (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_DEBT", errors.AccountInDebt),
    (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", errors.RequestIdReused),
    (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", errors.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", errors.PermissionDenied),
    (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", errors.Unavailable),
    (grpc.StatusCode.INTERNAL, "INTERNAL", errors.Internal),
]


@pytest.mark.parametrize(("code", "reason", "cls"), REASONS)
def test_from_rpc_error_picks_class_by_reason(
    code: grpc.StatusCode, reason: str, cls: type[errors.CreditWalletError]
) -> None:
    error = errors.from_rpc_error(rpc_error(code, "refused", reason, {"field": "user_id"}))
    assert type(error) is cls
    assert (error.code, error.reason, error.message) == (code, reason, "refused")
    assert error.metadata == {"field": "user_id"}
    assert str(error) == f"{reason}: refused"
    assert error.retryable == (code == grpc.StatusCode.UNAVAILABLE)


def test_insufficient_credits_carries_int_micros() -> None:
    metadata = {"available_micros": "1500000", "required_micros": "2000000"}
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", "INSUFFICIENT_CREDITS", metadata)
    )
    assert isinstance(error, errors.InsufficientCredits)
    assert isinstance(error, errors.FailedPrecondition)
    assert (error.available_micros, error.required_micros) == (1_500_000, 2_000_000)


def test_insufficient_credits_without_figures_degrades_to_its_code() -> None:
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", "INSUFFICIENT_CREDITS", {})
    )
    assert type(error) is errors.FailedPrecondition
    assert error.reason == "INSUFFICIENT_CREDITS"


def test_invalid_argument_names_the_field() -> None:
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_ARGUMENT", {"field": "x"})
    )
    assert isinstance(error, errors.InvalidArgument)
    assert error.field == "x"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, errors.CreditWalletError),
        (grpc.StatusCode.UNKNOWN, errors.CreditWalletError),
    ],
)
def test_from_rpc_error_without_details_picks_class_by_code(
    code: grpc.StatusCode, cls: type[errors.CreditWalletError]
) -> None:
    error = errors.from_rpc_error(rpc_error(code, "transport says no"))
    assert type(error) is cls
    assert (error.reason, error.message, error.metadata) == (code.name, "transport says no", {})


def test_unknown_reason_keeps_reason_and_uses_code_class() -> None:
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "gone", "WIDGET_NOT_FOUND"))
    assert type(error) is errors.NotFound
    assert error.reason == "WIDGET_NOT_FOUND"


def test_foreign_domain_and_inconsistent_details_are_ignored() -> None:
    foreign = rpc_error(grpc.StatusCode.NOT_FOUND, "x", "ACCOUNT_NOT_FOUND", domain="other.example")
    assert type(errors.from_rpc_error(foreign)) is errors.NotFound
    # grpc_status refuses a Status whose message disagrees with the call's details.
    mismatched = rpc_error(
        grpc.StatusCode.NOT_FOUND, "call", "ACCOUNT_NOT_FOUND", status_message="status"
    )
    error = errors.from_rpc_error(mismatched)
    assert (type(error), error.reason) == (errors.NotFound, "NOT_FOUND")


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


def test_every_cli_command_has_a_function() -> None:
    parser = build_parser()
    samples = [
        ["balance", "u"],
        ["ensure", "u"],
        ["debit", "u", "--agent", "a"],
        ["grant", "u", "1", "--source", "top_up"],
        ["reverse", "u", "t"],
        ["history", "u"],
        ["prices", "set", "a", "0.5"],
        ["prices", "list"],
        ["stats"],
        ["verify"],
        ["rollover"],
        ["streak", "u"],
        ["referral", "code", "u"],
        ["referral", "redeem", "u", "CODE"],
        ["events", "list"],
        ["events", "replay", "warehouse", "--failed"],
        ["events", "endpoints"],
        ["usage", "u", "--by", "agent,day"],
        ["members", "set", "u", "m", "--cap", "5"],
        ["members", "list", "u"],
    ]
    names = {parser.parse_args(sample).command_name for sample in samples}
    assert names == set(COMMANDS)


def test_global_options_work_after_the_command() -> None:
    args = build_parser().parse_args(["--timeout", "2", "balance", "u", "--json", "--micros"])
    assert (args.json, args.timeout, args.micros) == (True, 2.0, True)


# --- retries against a real grpc.aio server -------------------------------------------------


Failure = tuple[grpc.StatusCode, str, dict[str, str]]


@dataclass
class ScriptedWallet:
    """WalletService.Debit failing with the scripted (code, reason, metadata) in order."""

    failures: list[Failure] = field(default_factory=list)
    requests: list[wallet_pb2.DebitRequest] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    async def debit(
        self,
        request: wallet_pb2.DebitRequest,
        context: grpc.aio.ServicerContext[wallet_pb2.DebitRequest, wallet_pb2.DebitResponse],
    ) -> wallet_pb2.DebitResponse:
        self.requests.append(request)
        metadata = dict(context.invocation_metadata() or ())
        self.authorizations.append(str(metadata.get("authorization", "")))
        if self.failures:
            code, reason, info_metadata = self.failures.pop(0)
            message = f"scripted {reason}"
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.ErrorInfo(
                    reason=reason, domain="creditwallet", metadata=info_metadata
                )
            )
            status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
            await context.abort(code, message, ((DETAILS_KEY, status.SerializeToString()),))
        return wallet_pb2.DebitResponse(
            transaction_id="txn-1",
            charged_micros=request.amount_micros,
            available_micros=3_500_000,
        )


UNAVAILABLE: Failure = (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", {})
SHORT = {"available_micros": "0", "required_micros": "1500000"}
INSUFFICIENT: Failure = (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS", SHORT)


@dataclass
class FakeServer:
    target: str
    wallet: ScriptedWallet


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


async def test_cli_debits_exact_micros_and_prints_json(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", fake_server.target, "--token", TOKEN, "--json"]
    argv += ["debit", "alice", "--amount", "1.5", "--request-id", "cli-1"]
    exit_code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert exit_code == 0
    assert json.loads(captured.out)["chargedMicros"] == "1500000"
    assert fake_server.wallet.requests[0].amount_micros == 1_500_000
    assert fake_server.wallet.requests[0].request_id == "cli-1"
    assert TOKEN not in captured.out + captured.err


async def test_cli_prints_credits_and_reports_errors(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", fake_server.target, "--token", TOKEN, "debit", "alice", "--amount", "1.5"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"charged\s+1\.5 credits", out)
    assert re.search(r"available\s+3\.5 credits", out)
    fake_server.wallet.failures = [INSUFFICIENT]
    assert await asyncio.to_thread(main, argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: INSUFFICIENT_CREDITS: ")
    assert TOKEN not in captured.out + captured.err
