"""``creditwallet debit --file FILE``: many debits from a file, sent with BatchDebit.

The file is JSON Lines (``-`` reads standard input): one debit per line, an object with the
fields of a Debit request in the protobuf JSON mapping (``user_id`` or ``userId``,
``agent_id`` + ``quantity`` or ``amount_micros``, ``request_id``, ``session_id``,
``metadata``, and any field Debit gains later), plus ``amount``: credits as text (``"1.5"``),
or micro-credits with ``--micros``, as ``--amount`` takes them. Blank lines and lines starting
with ``#`` are skipped.

Why a line without a ``request_id`` gets one derived from its content (``file-`` and a hash of
the line): running the same file again, after exit 3 say, applies nothing twice. Two identical
lines are therefore one debit; give each its own ``request_id`` to debit twice.

Each line is applied, replayed or refused on its own; the table shows each outcome. Exit 0
when every line was applied or replayed, 1 when any was refused, 2 for a file that cannot be
read or parsed (nothing is sent then).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from creditwallet.client import render
from creditwallet.client.render import Amounts
from creditwallet.core import limits
from creditwallet.core.units import parse_credits
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf import json_format
from rich.console import RenderableType
from rich.text import Text

if TYPE_CHECKING:
    from creditwallet.client.wallet import CreditWalletClient

# Only these flags of `debit` go with --file; the file says everything else.
_SINGLE_DEBIT_FLAGS = {"user": "USER", "agent": "--agent", "amount": "--amount"}


class FileError(ValueError):
    """The file cannot be read or a line is not a debit (a usage error: nothing was sent)."""


def add_arguments(leaf: argparse.ArgumentParser) -> None:
    leaf.add_argument(
        "--file",
        metavar="FILE",
        help="debit every line of a JSON Lines file ('-' for stdin) with BatchDebit, "
        "instead of USER and --agent/--amount",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """USER and a cost for one debit, or --file alone: argparse cannot say "either" itself."""
    if getattr(args, "command_name", "") != "debit":
        return
    if args.file is not None:
        given = [flag for dest, flag in _SINGLE_DEBIT_FLAGS.items() if getattr(args, dest)]
        if args.quantity is not None:
            given.append("--quantity")
        if args.request_id is not None:
            given.append("--request-id")
        if given:
            parser.error(f"--file takes every debit from the file: drop {', '.join(given)}")
        return
    if args.user is None:
        parser.error("the following arguments are required: USER (or --file)")
    if args.agent is None and args.amount is None:
        parser.error("one of the arguments --agent --amount is required")


def read(path: str, *, micros: bool) -> list[wallet_pb2.DebitRequest]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FileError(f"--file {path}: {getattr(error, 'strerror', None) or error}") from None
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            requests.append(_debit(line, micros=micros))
        except (ValueError, json_format.ParseError) as error:
            raise FileError(f"--file {path}, line {number}: {error}") from None
    if not requests:
        raise FileError(f"--file {path}: no debits in it")
    return requests


def _debit(line: str, *, micros: bool) -> wallet_pb2.DebitRequest:
    fields: Any = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("each line is one JSON object")
    amount = fields.pop("amount", None)
    if amount is not None:
        if "amount_micros" in fields or "amountMicros" in fields:
            raise ValueError("give amount or amount_micros, not both")
        text = str(amount)
        fields["amount_micros"] = int(text) if micros and text.isdigit() else _credits(text, micros)
    request = json_format.ParseDict(fields, wallet_pb2.DebitRequest())
    if not request.request_id:
        digest = hashlib.sha256(line.strip().encode()).hexdigest()[:32]
        request.request_id = f"file-{digest}"
    return request


def _credits(text: str, micros: bool) -> int:
    if micros:
        raise ValueError(f"amount {text!r}: not a whole number of micro-credits (--micros)")
    try:
        return parse_credits(text)
    except ValueError as error:
        raise ValueError(f"amount: {error}") from None


def send(
    client: CreditWalletClient, requests: Sequence[wallet_pb2.DebitRequest]
) -> wallet_pb2.BatchDebitResponse:
    """Every debit, in as few BatchDebit calls as the server takes; results in order."""
    merged = wallet_pb2.BatchDebitResponse()
    for chunk in chunks(requests):
        merged.results.extend(client.batch_debit(chunk).results)
    return merged


# A debit's bytes inside BatchDebitRequest: its own, plus the field's tag and length prefix.
_ITEM_FRAMING_BYTES_MAX = 1 + 3


def chunks(
    requests: Sequence[wallet_pb2.DebitRequest],
) -> Iterator[Sequence[wallet_pb2.DebitRequest]]:
    """Consecutive runs of debits, each one BatchDebit the server takes: at most
    ``BATCH_DEBIT_ITEMS_MAX`` debits and ``BATCH_DEBIT_BYTES_MAX`` bytes (a debit larger than
    that is sent alone, and refused: over 64 KiB no debit is taken)."""
    start, size = 0, 0
    for index, request in enumerate(requests):
        item = request.ByteSize() + _ITEM_FRAMING_BYTES_MAX
        full = index - start == limits.BATCH_DEBIT_ITEMS_MAX
        if index > start and (full or size + item > limits.BATCH_DEBIT_BYTES_MAX):
            yield requests[start:index]
            start, size = index, 0
        size += item
    if start < len(requests):
        yield requests[start:]


def outcome(result: wallet_pb2.BatchDebitResult) -> str:
    if result.WhichOneof("outcome") == "error":
        return f"refused: {result.error.reason}"
    return "replayed" if result.debit.replayed else "applied"


def view(
    requests: Sequence[wallet_pb2.DebitRequest],
    reply: wallet_pb2.BatchDebitResponse,
    amounts: Amounts,
) -> tuple[RenderableType, bool]:
    """The table of outcomes, and whether every debit was applied or replayed."""
    rows = []
    for request, result in zip(requests, reply.results, strict=True):
        if result.WhichOneof("outcome") == "error":
            charged, available, detail = "-", "-", result.error.message
        else:
            debit = result.debit
            charged = amounts.text(debit.charged_micros)
            available = amounts.text(debit.available_micros)
            detail = debit.transaction_id
        rows.append(
            [request.user_id, request.request_id, outcome(result), charged, available, detail]
        )
    refused = sum(1 for r in reply.results if r.WhichOneof("outcome") == "error")
    headers = ["user", "request_id", "outcome", "charged", "available", "transaction / why"]
    summary = Text(f"{len(requests) - refused} applied or replayed, {refused} refused")
    return render.stack(render.table(headers, rows, right=frozenset({3, 4})), summary), not refused
