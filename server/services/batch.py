"""BatchDebit: many debits in one call, each through the one debit route, each on its own.

Why each item goes through ``Runtime.debit`` (the group-commit batcher) rather than a path of
its own: every guarantee of a Debit then holds per item by construction — its request_id
claimed and replayed on its own, all or nothing, never overdrawing, a refusal recorded under
its request_id, one bad item never failing the others. The items of one call are submitted
together, so they share the batcher's transactions (up to ``limits.DEBIT_BATCH_MAX`` debits
in each) with each other and with concurrent Debits.

Nothing is all or nothing across items: each result is what Debit would answer for that
item, in the order of the requests. A malformed item is refused on its own (its fields named
as Debit names them); only a malformed call (no items, or more than
``limits.BATCH_DEBIT_ITEMS_MAX``) is refused whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from creditwallet.core import limits, logs
from creditwallet.server import errors, metrics
from creditwallet.v1 import wallet_service_pb2 as wpb

log = logging.getLogger(__name__)

DebitOne = Callable[[wpb.DebitRequest], Awaitable[wpb.DebitResponse]]


def check_size(request: wpb.BatchDebitRequest) -> None:
    count = len(request.requests)
    if not 1 <= count <= limits.BATCH_DEBIT_ITEMS_MAX:
        raise errors.invalid(
            "requests", f"a batch holds 1 to {limits.BATCH_DEBIT_ITEMS_MAX} debits, not {count}"
        )


async def batch_debit(request: wpb.BatchDebitRequest, debit: DebitOne) -> wpb.BatchDebitResponse:
    """Every item through ``debit`` at once; each outcome in its place."""
    check_size(request)
    results = await asyncio.gather(*(_one(item, debit) for item in request.requests))
    return wpb.BatchDebitResponse(results=results)


async def _one(item: wpb.DebitRequest, debit: DebitOne) -> wpb.BatchDebitResult:
    with logs.request_context(item.request_id[: limits.REQUEST_ID_LENGTH_MAX]):
        try:
            size = item.ByteSize()
            if size > limits.GRPC_RECEIVE_BYTES_MAX:  # what Debit would refuse it for
                raise errors.message_too_large(size, limits.GRPC_RECEIVE_BYTES_MAX)
            return wpb.BatchDebitResult(debit=await debit(item))
        except errors.LedgerError as exc:
            if exc.reason == "INSUFFICIENT_CREDITS":
                metrics.INSUFFICIENT.inc()
            return wpb.BatchDebitResult(error=refusal(exc))
        except Exception:
            # A bug: INTERNAL for this item only, logged as the gate logs a failed call.
            log.exception("unexpected error", extra={"method": "BatchDebit"})
            return wpb.BatchDebitResult(error=refusal(errors.internal()))


def refusal(exc: errors.LedgerError) -> wpb.BatchDebitError:
    return wpb.BatchDebitError(
        code=exc.code, reason=exc.reason, message=exc.message, metadata=exc.metadata
    )
