"""A real grpc.aio server on 127.0.0.1 whose ``Debit`` fails as scripted and records every
request it sees: a retry's property that matters (the identical message, so the same
request_id) is only observable on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import grpc.aio
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

TOKEN = "unit-test-token"
DETAILS_KEY = "grpc-status-details-bin"


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
