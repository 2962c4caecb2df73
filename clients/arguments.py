"""The ``creditwallet`` command line grammar: subcommands, options and argument types.

Why apart from ``clients.cli``: the grammar is data (what may be typed), the commands are
behaviour (what is called and shown); each leaf parser names its command in ``command_name``
("prices set") and ``clients.cli.COMMANDS`` maps names to functions, a mapping a test checks.

Every amount argument goes through ``credits_argument``: decimal credits to integer micros,
exactly, refusing more than six decimals as a usage error (exit 2) rather than rounding.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Final

from creditwallet.client import events_cli
from creditwallet.core import limits
from creditwallet.core.commands import parser as command_parser
from creditwallet.core.units import parse_credits
from creditwallet.v1 import common_pb2

PAGE_SIZE_MAX: Final = 500
HISTORY_LIMIT_DEFAULT: Final = 20
PRICE_UNIT_DEFAULT: Final = "run"

# Labels people type ("top_up") for the enum values, in the enum's order, UNSPECIFIED left out.
LOT_SOURCES: Final = {
    name.removeprefix("LOT_SOURCE_").lower(): value
    for name, value in common_pb2.LotSource.items()
    if value != common_pb2.LOT_SOURCE_UNSPECIFIED
}
TRANSACTION_TYPES: Final = {
    name.removeprefix("TRANSACTION_TYPE_").lower(): value
    for name, value in common_pb2.TransactionType.items()
    if value != common_pb2.TRANSACTION_TYPE_UNSPECIFIED
}


def build_parser() -> argparse.ArgumentParser:
    """The whole grammar; global options work before or after the command."""
    parser = command_parser("creditwallet", "Operate the credit-wallet ledger.")
    _add_global_options(parser, suppress=False)
    # The same options on every command, defaulting to "not given" so that they only
    # override the values parsed before the command when they are actually typed after it.
    late_globals = argparse.ArgumentParser(add_help=False)
    _add_global_options(late_globals, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        *,
        parent: str = "",
    ) -> argparse.ArgumentParser:
        leaf = group.add_parser(name, help=summary, description=summary, parents=[late_globals])
        leaf.set_defaults(command_name=f"{parent} {name}".strip())
        return leaf

    leaf = command(commands, "balance", "Show a user's available, held and debt credits and lots.")
    leaf.add_argument("user")

    leaf = command(commands, "ensure", "Create a user's account (with its trial) if missing.")
    leaf.add_argument("user")
    leaf.add_argument("--referral-code", default="", help="a code to redeem on creation")

    leaf = command(commands, "debit", "Spend credits by agent use or by explicit amount.")
    leaf.add_argument("user")
    cost = leaf.add_mutually_exclusive_group(required=True)
    cost.add_argument("--agent", help="charge the agent's price times --quantity")
    cost.add_argument("--amount", type=credits_argument, help="charge CREDITS, e.g. 1.5")
    leaf.add_argument("--quantity", type=_positive_int, help="units of --agent (default 1)")
    _add_request_id(leaf)

    leaf = command(commands, "grant", "Grant credits as a new lot.")
    leaf.add_argument("user")
    leaf.add_argument("amount", metavar="AMOUNT_CREDITS", type=credits_argument)
    leaf.add_argument("--source", required=True, choices=list(LOT_SOURCES))
    leaf.add_argument(
        "--expires-at", type=_aware_datetime, help="ISO 8601 with offset (default per source)"
    )
    leaf.add_argument("--reason", default="", help="recorded with the transaction")
    _add_request_id(leaf)

    leaf = command(commands, "history", "List a user's transactions, newest first.")
    leaf.add_argument("user")
    rows = leaf.add_mutually_exclusive_group()
    rows.add_argument("--limit", type=_page_size, default=HISTORY_LIMIT_DEFAULT, help="rows")
    rows.add_argument("--all", action="store_true", help="every row, page by page")
    leaf.add_argument("--type", choices=list(TRANSACTION_TYPES))

    prices = commands.add_parser("prices", help="Set or list agent prices.")
    price_commands = prices.add_subparsers(dest="prices_command", required=True, metavar="prices")
    leaf = command(
        price_commands, "set", "Create or replace an agent's price per unit.", parent="prices"
    )
    leaf.add_argument("agent")
    leaf.add_argument("price", metavar="PRICE_CREDITS", type=credits_argument)
    leaf.add_argument("--unit", default=PRICE_UNIT_DEFAULT, help="what a unit is")
    leaf.add_argument("--inactive", action="store_true", help="refuse debits for the agent")
    command(price_commands, "list", "List all agent prices.", parent="prices")

    command(commands, "stats", "Show totals and the last day's transactions by type.")
    command(commands, "verify", "Check the ledger invariants; exit 1 on violations.")

    leaf = command(commands, "reverse", "Give a debit's credits back, whole or in part.")
    leaf.add_argument("user")
    leaf.add_argument("transaction_id")
    leaf.add_argument("--amount", type=credits_argument, help="CREDITS (default: all left)")
    leaf.add_argument("--reason", default="", help="recorded with the reversal")
    _add_request_id(leaf)

    leaf = command(commands, "rollover", "Bring every account's bookkeeping up to date.")
    leaf.add_argument("period", nargs="?", default="", help="YYYY-MM (default: this month)")

    leaf = command(commands, "streak", "Show a user's Smart Streak.")
    leaf.add_argument("user")

    referral = commands.add_parser("referral", help="Show or redeem referral codes.")
    referral_commands = referral.add_subparsers(
        dest="referral_command", required=True, metavar="referral"
    )
    leaf = command(referral_commands, "code", "Show a user's referral code.", parent="referral")
    leaf.add_argument("user")
    leaf = command(
        referral_commands, "redeem", "Redeem a referral code for a new user.", parent="referral"
    )
    leaf.add_argument("user")
    leaf.add_argument("code")
    _add_request_id(leaf)
    events_cli.add_commands(commands, command, _add_request_id)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--target",
        default=default(None),
        help="HOST:PORT of the gRPC server (default: $LEDGER_TARGET, $GRPC_ADDRESS, "
        "127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="admin bearer token (default: $ADMIN_TOKEN, preferred: argv is visible to others)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the response as JSON"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default(limits.CLIENT_TIMEOUT_SECONDS_DEFAULT),
        help="deadline of each attempt in seconds",
    )
    parser.add_argument(
        "--tls", action="store_true", default=default(False), help="TLS with the system roots"
    )
    parser.add_argument("--tls-ca", type=Path, default=default(None), help="CA bundle (PEM)")
    parser.add_argument(
        "--tls-cert", type=Path, default=default(None), help="client certificate (PEM, mTLS)"
    )
    parser.add_argument(
        "--tls-key", type=Path, default=default(None), help="client private key (PEM, mTLS)"
    )


def _add_request_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--request-id", help="idempotency key; reuse it to retry safely (default: a new uuid4)"
    )


# Argument types: argparse reports their ArgumentTypeError as a usage error (exit 2).


def credits_argument(text: str) -> int:
    """Decimal credits -> micros, exactly; more than six decimals is a usage error."""
    try:
        return parse_credits(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _page_size(text: str) -> int:
    size = _positive_int(text)
    if size > PAGE_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"at most {PAGE_SIZE_MAX}: {text!r}")
    return size


def _seconds(text: str) -> float:
    try:
        seconds = float(text)  # a duration, not money: a float is the right type here
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return seconds


def _aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset (e.g. {text}Z): {text!r}")
    return moment
