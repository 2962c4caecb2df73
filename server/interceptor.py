"""The one gate every RPC passes: bearer-token scopes and the mapping of errors to statuses.

Scopes: WalletService needs ``agent``, BillingService ``billing``, AdminService ``admin``;
an admin token may call everything. Health and reflection are open, for load balancers
and grpcurl. Tokens are compared in constant time on bytes.

Errors: a ``LedgerError`` becomes its ``google.rpc.Status`` (code, message, ErrorInfo); any
other exception is logged with the method and request id and becomes a bare INTERNAL, so a
caller never sees a traceback.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from creditwallet.core import limits, logs
from creditwallet.core.settings import Secret
from creditwallet.server import errors, metrics, status
from grpc_status import rpc_status

log = logging.getLogger(__name__)

_SCOPE_BY_SERVICE = {
    "creditwallet.v1.WalletService": "agent",
    "creditwallet.v1.BillingService": "billing",
    "creditwallet.v1.AdminService": "admin",
}
_BEARER = b"bearer "


class GatewayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, tokens: dict[str, Secret]) -> None:
        self._tokens = {scope: secret.bytes() for scope, secret in tokens.items()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        service = method.rsplit("/", 2)[1] if method.count("/") == 2 else ""
        scope = _SCOPE_BY_SERVICE.get(service)
        if scope is None or handler is None:
            return handler
        if handler.unary_stream is not None:  # StreamEvents: the same gate, then the stream
            return grpc.unary_stream_rpc_method_handler(
                _guarded_stream(
                    method,
                    handler.unary_stream,
                    self._authorize(scope, details.invocation_metadata or ()),
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        refusal = self._authorize(scope, details.invocation_metadata or ())
        return grpc.unary_unary_rpc_method_handler(
            _guarded(method, handler.unary_unary, refusal),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authorize(self, scope: str, metadata: Any) -> errors.LedgerError | None:
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                raw = value if isinstance(value, bytes) else value.encode()
                if raw[: len(_BEARER)].lower() == _BEARER:
                    presented = raw[len(_BEARER) :].strip()
        if not presented:
            return errors.unauthenticated()
        matched = None
        for token_scope, token in self._tokens.items():
            # Compare against every token, always: the time taken says nothing.
            if hmac.compare_digest(presented, token) and matched is None:
                matched = token_scope
        if matched is None:
            return errors.unauthenticated()
        if matched != scope and matched != "admin":
            return errors.permission_denied(scope)
        return None


def _guarded(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
    refusal: errors.LedgerError | None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    name = method.rsplit("/", 1)[-1]

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request_id = str(getattr(request, "request_id", ""))[: limits.REQUEST_ID_LENGTH_MAX]
        with logs.request_context(request_id):
            return await _handle(request, context)

    async def _handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        failure = refusal
        response = None
        if failure is None:
            try:
                response = await behavior(request, context)
            except errors.LedgerError as exc:
                failure = exc
            except Exception:
                log.exception(
                    "unexpected error",
                    extra={"method": name, "request_id": getattr(request, "request_id", "")},
                )
                failure = errors.internal()
        code = status.code_of(failure) if failure else grpc.StatusCode.OK
        seconds = time.perf_counter() - started
        metrics.observe_rpc(name, code.name, seconds)
        # The access log: never the metadata (it holds the bearer token), only what is safe.
        log.debug(
            "rpc",
            extra={
                "method": name,
                "code": code.name,
                "request_id": str(getattr(request, "request_id", ""))[
                    : limits.REQUEST_ID_LENGTH_MAX
                ],
                "duration_ms": round(seconds * 1000, 3),
            },
        )
        if failure is not None:
            if failure.reason == "INSUFFICIENT_CREDITS":
                metrics.INSUFFICIENT.inc()
            await context.abort_with_status(  # type: ignore[attr-defined]
                rpc_status.to_status(status.to_status(failure))
            )
        return response

    return handle


def _guarded_stream(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]],
    refusal: errors.LedgerError | None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    """A server-streaming method behind the same scopes and error mapping."""
    name = method.rsplit("/", 1)[-1]

    async def handle(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        failure = refusal
        if failure is None:
            try:
                async for response in behavior(request, context):
                    yield response
            except errors.LedgerError as exc:
                failure = exc
            except Exception:
                log.exception("unexpected error", extra={"method": name})
                failure = errors.internal()
        metrics.RPCS.labels(name, failure.code if failure else "OK").inc()
        if failure is not None:
            await context.abort_with_status(  # type: ignore[attr-defined]
                rpc_status.to_status(status.to_status(failure))
            )

    return handle
