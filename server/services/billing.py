"""BillingService: the payment gateway's provider-neutral RPCs."""

from __future__ import annotations

from typing import Any

import grpc
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import billing_service_pb2_grpc as bgrpc

from server import errors
from server.services import Runtime

Context = grpc.aio.ServicerContext[Any, Any]


class BillingService(bgrpc.BillingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def RecordPurchase(
        self, request: bpb.RecordPurchaseRequest, context: Context
    ) -> bpb.RecordPurchaseResponse:
        raise _not_yet("RecordPurchase")

    async def SyncSubscription(
        self, request: bpb.SyncSubscriptionRequest, context: Context
    ) -> bpb.SyncSubscriptionResponse:
        raise _not_yet("SyncSubscription")

    async def RecordPaymentFailure(
        self, request: bpb.RecordPaymentFailureRequest, context: Context
    ) -> bpb.RecordPaymentFailureResponse:
        raise _not_yet("RecordPaymentFailure")

    async def RecordRefund(
        self, request: bpb.RecordRefundRequest, context: Context
    ) -> bpb.RecordRefundResponse:
        raise _not_yet("RecordRefund")

    async def Rollover(
        self, request: bpb.RolloverRequest, context: Context
    ) -> bpb.RolloverResponse:
        raise _not_yet("Rollover")


def _not_yet(method: str) -> errors.LedgerError:
    return errors.LedgerError(
        grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED", f"{method} is not implemented yet"
    )
