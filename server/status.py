"""The one mapping of a ledger refusal to gRPC: a ``google.rpc.Status`` with an ``ErrorInfo``.

The ledger raises ``LedgerError`` (a reason of the catalogue, a message, string metadata) and
knows nothing of gRPC; this is where the reason's code becomes a ``grpc.StatusCode`` and the
refusal a rich status the clients decode.
"""

from __future__ import annotations

import grpc
from creditwallet.core import reasons
from creditwallet.server.errors import LedgerError
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


def code_of(error: LedgerError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


def to_status(error: LedgerError) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=reasons.DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_of(error).value[0], message=error.message, details=[detail])
