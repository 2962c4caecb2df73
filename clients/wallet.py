"""``AsyncCreditWalletClient`` (grpc.aio) and ``CreditWalletClient`` (blocking grpc).

Both expose the same API:

- keyword methods for the common calls — ``ensure_account``, ``get_balance``, ``debit``,
  ``authorize``, ``capture``, ``void``, ``list_transactions``, ``get_usage``, ``get_streak``,
  ``get_referral_code``, ``redeem_referral_code``, ``rollover``, ``grant``, ``reverse_debit``,
  ``set_agent_price``, ``list_agent_prices``, ``get_stats``, ``verify_ledger``,
  ``get_rollover_progress``, ``list_holds``, ``get_daily_totals``, ``set_member``,
  ``list_members``, ``set_overdraft_limit`` (signatures and docs in ``clients.builders``);
- every RPC raw, taking its request message: ``client.wallet.Debit(request)``,
  ``client.billing.RecordPurchase(request)``, ``client.admin.Grant(request)``;
- ``call(rpc, request)`` for any entry of ``clients.rpc_table``.

Every attempt carries the bearer token and a deadline of ``timeout_seconds``. A call that fails
with ``UNAVAILABLE`` is sent again, the identical message (so the same ``request_id``), at most
``retries`` times with jittered exponential backoff (``clients.rpc_table``); every other failure
raises at once as the typed exception of ``clients.errors``. Worst case, a call takes
``(retries + 1) * timeout_seconds`` plus the backoff pauses.

Why one class per flavour rather than a sync wrapper around the async one: a sync wrapper
needs its own event loop thread, which surprises callers that already run one; the two classes
share everything but the waiting (the table, the builders, the policy) and differ in ~40 lines.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Final, Self

import grpc
import grpc.aio
from creditwallet.client import builders, rpc_table
from creditwallet.client.binding import AsyncMethod, SyncMethod
from creditwallet.client.errors import from_rpc_error
from creditwallet.client.raw import (
    AsyncAdminRpcs,
    AsyncBillingRpcs,
    AsyncWalletRpcs,
    SyncAdminRpcs,
    SyncBillingRpcs,
    SyncWalletRpcs,
)
from creditwallet.client.rpc_table import RequestT, ResponseT, Rpc
from creditwallet.core import limits
from creditwallet.v1 import events_pb2

AUTHORIZATION_METADATA_KEY: Final = "authorization"
# How long close() lets calls in flight finish.


class _ClientSettings:
    """Validated settings both clients share; the token stays out of every repr and message."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout_seconds: float,
        retries: int,
        tls: bool,
        root_certificates: bytes | None,
        private_key: bytes | None,
        certificate_chain: bytes | None,
        message_bytes_max: int,
        round_robin: bool = False,
        own_connection: bool = False,
    ) -> None:
        if not target:
            raise ValueError("target must be host:port")
        if not token or any(character.isspace() for character in token):
            raise ValueError("token must be non-empty and free of whitespace")
        if not 0 < timeout_seconds <= limits.CLIENT_TIMEOUT_SECONDS_MAX:
            raise ValueError(f"timeout_seconds must be in (0, {limits.CLIENT_TIMEOUT_SECONDS_MAX}]")
        if not 0 <= retries <= limits.CLIENT_RETRIES_MAX:
            raise ValueError(f"retries must be in [0, {limits.CLIENT_RETRIES_MAX}]")
        if message_bytes_max <= 0:
            raise ValueError("message_bytes_max must be positive")
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain")
        self.target = target
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.auth_metadata: tuple[tuple[str, str], ...] = (
            (AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),
        )
        self.options = rpc_table.channel_options(message_bytes_max, round_robin, own_connection)
        self.credentials: grpc.ChannelCredentials | None = None
        if tls or root_certificates is not None or private_key is not None:
            # None roots mean the system's trust store.
            self.credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
        # Jitter only; not security-relevant, so the default PRNG is right.
        self.rng = random.Random()

    def __repr__(self) -> str:
        return f"_ClientSettings(target={self.target!r}, token=<masked>)"


class AsyncCreditWalletClient:
    """The credit-wallet API over grpc.aio; create it inside a running event loop.

    ``async with AsyncCreditWalletClient(target, token) as client: await client.debit(...)``.
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout_seconds: float = limits.CLIENT_TIMEOUT_SECONDS_DEFAULT,
        retries: int = limits.CLIENT_RETRIES_DEFAULT,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        message_bytes_max: int = limits.CLIENT_MESSAGE_BYTES_MAX_DEFAULT,
        round_robin: bool = False,
        own_connection: bool = False,
    ) -> None:
        self._settings = _ClientSettings(
            target,
            token,
            timeout_seconds=timeout_seconds,
            retries=retries,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            message_bytes_max=message_bytes_max,
            round_robin=round_robin,
            own_connection=own_connection,
        )
        settings = self._settings
        if settings.credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=settings.options)
        else:
            self._channel = grpc.aio.secure_channel(
                target, settings.credentials, options=settings.options
            )
        self._callables: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
        self.wallet = AsyncWalletRpcs(self)
        self.billing = AsyncBillingRpcs(self)
        self.admin = AsyncAdminRpcs(self)

    def __repr__(self) -> str:
        return f"AsyncCreditWalletClient(target={self._settings.target!r})"

    async def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        """Sends ``request`` with deadline, token and retries; raises ``CreditWalletError``."""
        settings = self._settings
        multicallable = self._multicallable(rpc)
        retries_done = 0
        while True:
            try:
                response = await multicallable(
                    request, timeout=settings.timeout_seconds, metadata=settings.auth_metadata
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not rpc_table.should_retry(error.code, retries_done, settings.retries):
                    raise error from rpc_error
                await asyncio.sleep(rpc_table.backoff_seconds(retries_done, settings.rng))
                retries_done += 1
            else:
                return rpc.checked_response(response)

    def _multicallable(self, rpc: Rpc[Any, Any]) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        multicallable = self._callables.get(rpc.path)
        if multicallable is None:
            multicallable = self._channel.unary_unary(
                rpc.path,
                request_serializer=rpc.request_type.SerializeToString,
                response_deserializer=rpc.response_type.FromString,
            )
            self._callables[rpc.path] = multicallable
        return multicallable

    async def serving(self, service: str = "") -> bool:
        """Whether the server's gRPC health check says SERVING (``service`` "" is the server).

        Needs ``grpcio-health-checking`` (the server and gateway extras). False when the
        server does not answer within the deadline; never raises for an unreachable server."""
        from grpc_health.v1 import health_pb2

        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            answer = await check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self._settings.timeout_seconds,
            )
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def stream_events(
        self, after_cursor: str = "", *, types: Sequence[str] = (), user_id: str = ""
    ) -> AsyncIterator[events_pb2.Event]:
        """Events after ``after_cursor``, then new ones as they commit (no deadline: it follows).

        Resume after a disconnect with the ``cursor`` of the last event received: nothing is
        skipped and nothing comes twice. Not retried here; errors raise ``CreditWalletError``.
        """
        call = self._channel.unary_stream(
            f"/{rpc_table.WALLET_SERVICE}/StreamEvents",
            request_serializer=events_pb2.StreamEventsRequest.SerializeToString,
            response_deserializer=events_pb2.StreamEventsResponse.FromString,
        )
        request = events_pb2.StreamEventsRequest(
            after_cursor=after_cursor, types=list(types), user_id=user_id
        )
        try:
            async for response in call(request, metadata=self._settings.auth_metadata):
                yield response.event
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error

    async def close(self) -> None:
        """Closes the channel, letting calls in flight finish for a moment."""
        await self._channel.close(grace=limits.CLIENT_CLOSE_GRACE_SECONDS)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    ensure_account = AsyncMethod(rpc_table.ENSURE_ACCOUNT, builders.ensure_account)
    get_balance = AsyncMethod(rpc_table.GET_BALANCE, builders.get_balance)
    debit = AsyncMethod(rpc_table.DEBIT, builders.debit)
    batch_debit = AsyncMethod(rpc_table.BATCH_DEBIT, builders.batch_debit)
    authorize = AsyncMethod(rpc_table.AUTHORIZE, builders.authorize)
    capture = AsyncMethod(rpc_table.CAPTURE, builders.capture)
    void = AsyncMethod(rpc_table.VOID, builders.void)
    list_transactions = AsyncMethod(rpc_table.LIST_TRANSACTIONS, builders.list_transactions)
    get_usage = AsyncMethod(rpc_table.GET_USAGE, builders.get_usage)
    get_streak = AsyncMethod(rpc_table.GET_STREAK, builders.get_streak)
    get_referral_code = AsyncMethod(rpc_table.GET_REFERRAL_CODE, builders.get_referral_code)
    redeem_referral_code = AsyncMethod(
        rpc_table.REDEEM_REFERRAL_CODE, builders.redeem_referral_code
    )
    rollover = AsyncMethod(rpc_table.ROLLOVER, builders.rollover)
    grant = AsyncMethod(rpc_table.GRANT, builders.grant)
    reverse_debit = AsyncMethod(rpc_table.REVERSE_DEBIT, builders.reverse_debit)
    set_agent_price = AsyncMethod(rpc_table.SET_AGENT_PRICE, builders.set_agent_price)
    set_overdraft_limit = AsyncMethod(rpc_table.SET_OVERDRAFT_LIMIT, builders.set_overdraft_limit)
    list_agent_prices = AsyncMethod(rpc_table.LIST_AGENT_PRICES, builders.list_agent_prices)
    get_stats = AsyncMethod(rpc_table.GET_STATS, builders.get_stats)
    set_member = AsyncMethod(rpc_table.SET_MEMBER, builders.set_member)
    list_members = AsyncMethod(rpc_table.LIST_MEMBERS, builders.list_members)
    verify_ledger = AsyncMethod(rpc_table.VERIFY_LEDGER, builders.verify_ledger)
    get_rollover_progress = AsyncMethod(
        rpc_table.GET_ROLLOVER_PROGRESS, builders.get_rollover_progress
    )
    list_holds = AsyncMethod(rpc_table.LIST_HOLDS, builders.list_holds)
    get_daily_totals = AsyncMethod(rpc_table.GET_DAILY_TOTALS, builders.get_daily_totals)


class CreditWalletClient:
    """The credit-wallet API over a blocking grpc channel; safe to share between threads.

    ``with CreditWalletClient(target, token) as client: client.get_balance("alice")``.
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        timeout_seconds: float = limits.CLIENT_TIMEOUT_SECONDS_DEFAULT,
        retries: int = limits.CLIENT_RETRIES_DEFAULT,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        message_bytes_max: int = limits.CLIENT_MESSAGE_BYTES_MAX_DEFAULT,
        round_robin: bool = False,
        own_connection: bool = False,
    ) -> None:
        self._settings = _ClientSettings(
            target,
            token,
            timeout_seconds=timeout_seconds,
            retries=retries,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            message_bytes_max=message_bytes_max,
            round_robin=round_robin,
            own_connection=own_connection,
        )
        settings = self._settings
        if settings.credentials is None:
            self._channel = grpc.insecure_channel(target, options=settings.options)
        else:
            self._channel = grpc.secure_channel(
                target, settings.credentials, options=settings.options
            )
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable[Any, Any]] = {}
        self.wallet = SyncWalletRpcs(self)
        self.billing = SyncBillingRpcs(self)
        self.admin = SyncAdminRpcs(self)

    def __repr__(self) -> str:
        return f"CreditWalletClient(target={self._settings.target!r})"

    def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        """Sends ``request`` with deadline, token and retries; raises ``CreditWalletError``."""
        settings = self._settings
        multicallable = self._multicallable(rpc)
        retries_done = 0
        while True:
            try:
                response = multicallable(
                    request, timeout=settings.timeout_seconds, metadata=settings.auth_metadata
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not rpc_table.should_retry(error.code, retries_done, settings.retries):
                    raise error from rpc_error
                time.sleep(rpc_table.backoff_seconds(retries_done, settings.rng))
                retries_done += 1
            else:
                return rpc.checked_response(response)

    def _multicallable(self, rpc: Rpc[Any, Any]) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
        multicallable = self._callables.get(rpc.path)
        if multicallable is None:
            multicallable = self._channel.unary_unary(
                rpc.path,
                request_serializer=rpc.request_type.SerializeToString,
                response_deserializer=rpc.response_type.FromString,
            )
            self._callables[rpc.path] = multicallable
        return multicallable

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    ensure_account = SyncMethod(rpc_table.ENSURE_ACCOUNT, builders.ensure_account)
    get_balance = SyncMethod(rpc_table.GET_BALANCE, builders.get_balance)
    debit = SyncMethod(rpc_table.DEBIT, builders.debit)
    batch_debit = SyncMethod(rpc_table.BATCH_DEBIT, builders.batch_debit)
    authorize = SyncMethod(rpc_table.AUTHORIZE, builders.authorize)
    capture = SyncMethod(rpc_table.CAPTURE, builders.capture)
    void = SyncMethod(rpc_table.VOID, builders.void)
    list_transactions = SyncMethod(rpc_table.LIST_TRANSACTIONS, builders.list_transactions)
    get_usage = SyncMethod(rpc_table.GET_USAGE, builders.get_usage)
    get_streak = SyncMethod(rpc_table.GET_STREAK, builders.get_streak)
    get_referral_code = SyncMethod(rpc_table.GET_REFERRAL_CODE, builders.get_referral_code)
    redeem_referral_code = SyncMethod(rpc_table.REDEEM_REFERRAL_CODE, builders.redeem_referral_code)
    rollover = SyncMethod(rpc_table.ROLLOVER, builders.rollover)
    grant = SyncMethod(rpc_table.GRANT, builders.grant)
    reverse_debit = SyncMethod(rpc_table.REVERSE_DEBIT, builders.reverse_debit)
    set_agent_price = SyncMethod(rpc_table.SET_AGENT_PRICE, builders.set_agent_price)
    set_overdraft_limit = SyncMethod(rpc_table.SET_OVERDRAFT_LIMIT, builders.set_overdraft_limit)
    list_agent_prices = SyncMethod(rpc_table.LIST_AGENT_PRICES, builders.list_agent_prices)
    get_stats = SyncMethod(rpc_table.GET_STATS, builders.get_stats)
    set_member = SyncMethod(rpc_table.SET_MEMBER, builders.set_member)
    list_members = SyncMethod(rpc_table.LIST_MEMBERS, builders.list_members)
    verify_ledger = SyncMethod(rpc_table.VERIFY_LEDGER, builders.verify_ledger)
    get_rollover_progress = SyncMethod(
        rpc_table.GET_ROLLOVER_PROGRESS, builders.get_rollover_progress
    )
    list_holds = SyncMethod(rpc_table.LIST_HOLDS, builders.list_holds)
    get_daily_totals = SyncMethod(rpc_table.GET_DAILY_TOTALS, builders.get_daily_totals)
