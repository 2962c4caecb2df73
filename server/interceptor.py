"""The one gate every RPC passes: bearer tokens and scopes, bounded reads, error mapping.

Scopes: WalletService needs ``agent``, BillingService ``billing``, AdminService ``admin``;
an admin token may call everything. Tokens are labelled (``server.config.Token``); a caller is
known by its token's label, which the access log and the metrics name (never the token).
Tokens are compared in constant time on bytes, against every configured token.

Refuse before reading. The gate decides on the call's headers alone, before any byte of the
body is read: every handler it returns is a *request-streaming* one, which gRPC starts as
soon as the headers arrive (a unary handler would first wait for, and buffer, the whole
request). A refused call is answered at once (UNAUTHENTICATED, PERMISSION_DENIED) without
reading its body; an authorised one reads exactly one message, within
``GRPC_REQUEST_READ_TIMEOUT_SECONDS`` (or its deadline, if sooner), as raw bytes, and only
then deserialises it: bytes that are not a valid request are INVALID_ARGUMENT. gRPC itself
refuses a message over ``BATCH_DEBIT_BYTES_MAX`` (RESOURCE_EXHAUSTED, no reason) before
buffering it; the gate refuses one over ``GRPC_RECEIVE_BYTES_MAX`` to every method but
BatchDebit, unparsed (RESOURCE_EXHAUSTED, MESSAGE_TOO_LARGE). An answer larger than
``GRPC_MESSAGE_BYTES_MAX`` (which gRPC could not send) is logged and becomes INTERNAL. This holds
for unary and server-streaming methods alike, and for any method added later.

Bounded time. A call without a deadline gets ``GRPC_DEADLINE_SECONDS_DEFAULT`` (a stream
``GRPC_STREAM_DEADLINE_SECONDS_DEFAULT``); at that point it is DEADLINE_EXCEEDED.

Open services. Health and reflection need no token (load balancers, grpcurl) and so get a
budget of their own: at most ``GRPC_OPEN_CALLS_MAX`` at once, the rest RESOURCE_EXHAUSTED at
once, so that no number of them can take the server's slots from ledger RPCs.

Errors: a ``LedgerError`` becomes its ``google.rpc.Status`` (code, message, ErrorInfo); any
other exception is logged with the method and request id and becomes a bare INTERNAL, so a
caller never sees a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from creditwallet.core import limits, logs
from creditwallet.server import errors, metrics, status
from creditwallet.server.config import Token
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

log = logging.getLogger(__name__)

# gRPC's asyncio server logs this, with a traceback, when it could not send an answer because
# the call had already ended: the caller hung up or its deadline passed. It means to stay quiet
# when the caller is gone (its own check of ``client_closed``), but that flag is set by another
# task, so an answer sent in the same instant as the hang-up loses the race and is logged as an
# error. Nothing is wrong on the server's side and the ledger already committed or rolled back.
# The one other way a send fails, an answer over GRPC_MESSAGE_BYTES_MAX, is caught by the gate
# before gRPC sees it (logged as an error, answered INTERNAL), and listings end their pages
# before PAGE_BYTES_MAX, so none should ever reach that.
_GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
_SEND_FAILED_PREFIX = "ExecuteBatchError raised in core"


class _CallerGoneFilter(logging.Filter):
    """Turns gRPC's error for an answer to a caller that is gone into a one-line debug record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_SEND_FAILED_PREFIX):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = "caller gone before its answer was sent: %s", (message,)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return True


def quiet_callers_gone() -> None:
    """Install the filter above on gRPC's logger, once per process."""
    core = logging.getLogger(_GRPC_CORE_LOGGER)
    if not any(isinstance(f, _CallerGoneFilter) for f in core.filters):
        core.addFilter(_CallerGoneFilter())


_SCOPE_BY_SERVICE = {
    "creditwallet.v1.WalletService": "agent",
    "creditwallet.v1.BillingService": "billing",
    "creditwallet.v1.AdminService": "admin",
}
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
# The request bytes a method takes; every other guarded method takes GRPC_RECEIVE_BYTES_MAX.
# gRPC itself refuses anything over the largest of them before buffering it.
_RECEIVE_BYTES_MAX = {"/creditwallet.v1.WalletService/BatchDebit": limits.BATCH_DEBIT_BYTES_MAX}
_BEARER = b"bearer "
ANONYMOUS = "-"
# gRPC reports a call without a deadline as one centuries away.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # the end of a request stream

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any] | None


class _Plain(Exception):
    """A refusal of the transport, not of the ledger (its code names it; no reason)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Failure = errors.LedgerError | _Plain


class Caller:
    """Who is calling: the label of the token presented, and the scope it grants."""

    __slots__ = ("label", "scope")

    def __init__(self, label: str, scope: str) -> None:
        self.label = label
        self.scope = scope


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        tokens: Iterable[Token],
        *,
        read_timeout_seconds: float = limits.GRPC_REQUEST_READ_TIMEOUT_SECONDS,
        deadline_seconds: float = limits.GRPC_DEADLINE_SECONDS_DEFAULT,
        stream_deadline_seconds: float = limits.GRPC_STREAM_DEADLINE_SECONDS_DEFAULT,
        open_calls_max: int = limits.GRPC_OPEN_CALLS_MAX,
    ) -> None:
        self._tokens = [(t.secret.bytes(), Caller(t.label, t.scope)) for t in tokens]
        self._read_timeout = read_timeout_seconds
        self._deadline = deadline_seconds
        self._stream_deadline = stream_deadline_seconds
        self._open_calls_max = open_calls_max
        self.open_calls = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None  # UNIMPLEMENTED, from gRPC itself
        method = details.method
        service = method.rsplit("/", 2)[1] if method.count("/") == 2 else ""
        name = method.rsplit("/", 1)[-1]
        scope = _SCOPE_BY_SERVICE.get(service)
        if scope is None:
            if service in OPEN_SERVICES:
                return self._open(name, handler)
            return _refusing(name, ANONYMOUS, handler, errors.unauthenticated())
        caller, refusal = self._authorize(scope, details.invocation_metadata or ())
        if refusal is not None:
            return _refusing(name, caller.label if caller else ANONYMOUS, handler, refusal)
        assert caller is not None
        size_max = _RECEIVE_BYTES_MAX.get(method, limits.GRPC_RECEIVE_BYTES_MAX)
        return self._guarded(name, caller.label, handler, size_max)

    def _authorize(
        self, scope: str, metadata: Any
    ) -> tuple[Caller | None, errors.LedgerError | None]:
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                raw = value if isinstance(value, bytes) else value.encode()
                if raw[: len(_BEARER)].lower() == _BEARER:
                    presented = raw[len(_BEARER) :].strip()
        if not presented:
            return None, errors.unauthenticated()
        matched = None
        for token, caller in self._tokens:
            # Compare against every token, always: the time taken says nothing.
            if hmac.compare_digest(presented, token) and matched is None:
                matched = caller
        if matched is None:
            return None, errors.unauthenticated()
        if matched.scope != scope and matched.scope != "admin":
            return matched, errors.permission_denied(scope)
        return matched, None

    def _guarded(self, name: str, label: str, handler: Any, size_max: int) -> Any:
        deserialize: Deserializer = handler.request_deserializer
        if handler.unary_unary is not None:
            behavior: Any = handler.unary_unary

            async def unary(requests: AsyncIterator[bytes], context: Context) -> Any:
                started = time.perf_counter()
                request: Any = None
                response = None
                failure: Failure | None = None
                try:
                    async with asyncio.timeout(_budget(context, self._deadline)):
                        request = await self._read(context, deserialize, size_max)
                        with logs.request_context(_request_id(request)):
                            response = await behavior(request, context)
                    if response is not None and _too_large(response):
                        # gRPC would fail to send it, and only log that it could not.
                        log.error(
                            "answer larger than GRPC_MESSAGE_BYTES_MAX",
                            extra={"method": name, "request_id": _request_id(request)},
                        )
                        response, failure = None, errors.internal()
                except errors.LedgerError as exc:
                    failure = exc
                except TimeoutError:
                    failure = _Plain(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except Exception:
                    log.exception(
                        "unexpected error",
                        extra={"method": name, "request_id": _request_id(request)},
                    )
                    failure = errors.internal()
                await _finish(name, label, request, started, failure, context)
                return response

            return grpc.stream_unary_rpc_method_handler(
                unary,  # type: ignore[arg-type]
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_behavior: Any = handler.unary_stream

            async def stream(requests: AsyncIterator[bytes], context: Context) -> None:
                started = time.perf_counter()
                request: Any = None
                failure: Failure | None = None
                try:
                    async with asyncio.timeout(_budget(context, self._stream_deadline)):
                        request = await self._read(context, deserialize, size_max)
                        await _relay(stream_behavior(request, context), context)
                except errors.LedgerError as exc:
                    failure = exc
                except TimeoutError:
                    failure = _Plain(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except Exception:
                    log.exception("unexpected error", extra={"method": name})
                    failure = errors.internal()
                await _finish(name, label, request, started, failure, context)

            return grpc.stream_stream_rpc_method_handler(
                stream,  # type: ignore[arg-type]
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        # A client-streaming or bidirectional ledger method: none exists; refuse rather than
        # let one through unguarded when it is added.
        unimplemented = _Plain(grpc.StatusCode.UNIMPLEMENTED, "not served through the gate")
        return _refusing(name, label, handler, unimplemented)

    async def _read(self, context: Context, deserialize: Deserializer, size_max: int) -> Any:
        """The call's one request message, deserialised only now, after authorisation."""
        try:
            async with asyncio.timeout(self._read_timeout):
                raw = await context.read()
        except TimeoutError:
            raise errors.invalid("request", "the request message did not arrive in time") from None
        if raw is _EOF or not isinstance(raw, bytes):
            raise errors.invalid("request", "the call carried no request message")
        return _parsed(raw, deserialize, size_max)

    def _open(self, name: str, handler: Any) -> Any:
        """Health and reflection, unauthenticated, within their own small budget."""
        deserialize: Deserializer = handler.request_deserializer
        gate = self

        async def run(requests: AsyncIterator[bytes], context: Context) -> Any:
            if gate.open_calls >= gate._open_calls_max:
                metrics.observe_rpc(name, "RESOURCE_EXHAUSTED", 0.0, caller=ANONYMOUS)
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health/reflection calls"
                )
            gate.open_calls += 1
            try:
                async with asyncio.timeout(_budget(context, gate._stream_deadline)):
                    if handler.unary_unary is not None:
                        request = await gate._read(
                            context, deserialize, limits.GRPC_RECEIVE_BYTES_MAX
                        )
                        return await handler.unary_unary(request, context)
                    if handler.unary_stream is not None:
                        request = await gate._read(
                            context, deserialize, limits.GRPC_RECEIVE_BYTES_MAX
                        )
                        await _relay(handler.unary_stream(request, context), context)
                        return None
                    assert handler.stream_stream is not None
                    await _relay(
                        handler.stream_stream(_deserialized(context, deserialize), context),
                        context,
                    )
                    return None
            except errors.LedgerError as exc:
                await context.abort_with_status(  # type: ignore[attr-defined]
                    rpc_status.to_status(status.to_status(exc))
                )
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            finally:
                gate.open_calls -= 1
            return None

        if handler.unary_unary is not None or handler.stream_unary is not None:
            if handler.stream_unary is not None:
                return handler  # no such open method exists today; served as gRPC built it
            return grpc.stream_unary_rpc_method_handler(
                run,  # type: ignore[arg-type]
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            run,  # type: ignore[arg-type]
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


def _refusing(name: str, label: str, handler: Any, refusal: Failure) -> Any:
    """A handler that answers ``refusal`` at once, reading nothing of the body."""

    async def refuse(requests: AsyncIterator[bytes], context: Context) -> None:
        await _finish(name, label, None, time.perf_counter(), refusal, context)

    make = (
        grpc.stream_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
    )
    return make(refuse, request_deserializer=None, response_serializer=handler.response_serializer)  # type: ignore[arg-type]


def _budget(context: Context, default_seconds: float) -> float:
    """The call's own deadline, or the server's default when it carries none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > limits.GRPC_DEADLINE_NONE_SECONDS:
        return default_seconds
    return max(0.0, float(remaining))


async def _relay(result: Any, context: Context) -> None:
    """Run a streaming behaviour: an async iterator is written out, a coroutine awaited."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            await context.write(item)
    elif result is not None and hasattr(result, "__await__"):
        await result


async def _deserialized(context: Context, deserialize: Deserializer) -> AsyncIterator[Any]:
    while True:
        raw = await context.read()
        if raw is _EOF:
            return
        yield _parsed(raw, deserialize, limits.GRPC_RECEIVE_BYTES_MAX)


def _parsed(raw: bytes, deserialize: Deserializer, size_max: int) -> Any:
    """A request message's bytes, refused unparsed past ``size_max``, else deserialised."""
    if len(raw) > size_max:
        raise errors.message_too_large(len(raw), size_max)
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except (DecodeError, ValueError, TypeError, RuntimeError):
        raise errors.invalid("request", "the request is not a valid message") from None


def _too_large(response: Any) -> bool:
    return bool(response.ByteSize() > limits.GRPC_MESSAGE_BYTES_MAX)


def _request_id(request: Any) -> str:
    return str(getattr(request, "request_id", ""))[: limits.REQUEST_ID_LENGTH_MAX]


async def _finish(
    name: str,
    label: str,
    request: Any,
    started: float,
    failure: Failure | None,
    context: Context,
) -> None:
    if failure is None:
        code = grpc.StatusCode.OK
    elif isinstance(failure, _Plain):
        code = failure.code
    else:
        code = status.code_of(failure)
    seconds = time.perf_counter() - started
    metrics.observe_rpc(name, code.name, seconds, caller=label)
    # The access log: never the metadata (it holds the bearer token), only what is safe.
    log.debug(
        "rpc",
        extra={
            "method": name,
            "code": code.name,
            "caller": label,
            "request_id": _request_id(request),
            "duration_ms": round(seconds * 1000, 3),
        },
    )
    if isinstance(failure, _Plain):
        await context.abort(failure.code, failure.message)
    elif failure is not None:
        if failure.reason == "INSUFFICIENT_CREDITS":
            metrics.INSUFFICIENT.inc()
        await context.abort_with_status(  # type: ignore[attr-defined]
            rpc_status.to_status(status.to_status(failure))
        )
