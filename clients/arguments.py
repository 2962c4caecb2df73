"""The ``creditwallet`` command line grammar: subcommands, options and argument types.

Why apart from ``clients.cli``: the grammar is data (what may be typed), the commands are
behaviour (what is called and shown); each leaf parser names its command in ``command_name``
("prices set") and ``clients.cli.COMMANDS`` maps names to functions, a mapping a test checks.

Amounts are typed as text and converted after parsing (``resolve_amounts``), because their
unit depends on ``--micros``, which may come anywhere on the line: decimal credits by default,
integer micro-credits with ``--micros``, exactly, never rounded. A bad amount is a usage error
(exit 2) naming the flag. ``FIELD_FLAGS`` maps the request fields the server names in its
INVALID_ARGUMENT answers to the flags that set them, so messages speak of what was typed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Final

import shtab
from creditwallet.client import debitfile, events_cli, teams_cli
from creditwallet.core import limits
from creditwallet.core.commands import parser as command_parser
from creditwallet.core.units import INT64_MAX, format_credits, parse_credits
from creditwallet.v1 import common_pb2

PAGE_SIZE_MAX: Final = limits.PAGE_SIZE_MAX
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

# Amount arguments: destination -> how it is shown in messages (the flag, or the positional).
AMOUNT_ARGUMENTS: Final = {
    "amount": "--amount",
    "grant_amount": "AMOUNT",
    "price": "PRICE",
    "overdraft_limit": "LIMIT",
    "cap": "--cap",
}

# Amounts whose bounds are not (1 micro, AMOUNT_MICROS_MAX): an overdraft limit may be 0.
AMOUNT_BOUNDS: Final = {"overdraft_limit": (0, limits.OVERDRAFT_LIMIT_MICROS_MAX)}

# Request fields named by the server's INVALID_ARGUMENT answers -> what the operator typed.
FIELD_FLAGS: Final[Mapping[str, Mapping[str, str]]] = {
    "": {
        "user_id": "USER",
        "request_id": "--request-id",
        "metadata": "--reason",
    },
    "debit": {
        "amount_micros": "--amount",
        "agent_id": "--agent",
        "quantity": "--quantity",
        "member_id": "--member",
        "for_agent_id": "--for-agent",
    },
    "usage": {"start_time": "--from", "end_time": "--to", "group_by": "--by"},
    "members set": {"member_id": "MEMBER", "cap_micros": "--cap", "cap_period": "--period"},
    "grant": {
        "amount_micros": "AMOUNT",
        "expires_at": "--expires-at",
        "source": "--source",
        "priority": "--priority",
        "agent_ids": "--agent",
    },
    "balance": {"agent_id": "--agent", "as_of": "--as-of"},
    "overdraft set": {"limit_micros": "LIMIT"},
    "reverse": {"amount_micros": "--amount", "transaction_id": "TRANSACTION_ID"},
    "prices set": {"agent_id": "AGENT", "price_micros": "PRICE", "unit": "--unit"},
    "history": {"page_size": "--limit", "type": "--type"},
    "ensure": {"referral_code": "--referral-code"},
    "referral redeem": {"code": "CODE"},
    "rollover": {"period": "PERIOD"},
}

EPILOG = """amounts are decimal credits (1 credit = 1,000,000 micro-credits); --micros types and
shows them as integer micro-credits instead. --json prints the response in the protobuf JSON
mapping (camelCase fields, 64-bit integers as strings), as the gateway answers.

exit status: 0 done; 1 refused by the ledger (or verify found violations); 2 usage error;
3 no answer (unreachable or past the deadline: the outcome of a change is unknown, re-run it
with the same --request-id).

environment: ADMIN_TOKEN (the token), LEDGER_TARGET or GRPC_ADDRESS (the server),
GATEWAY_ADDRESS and STRIPE_WEBHOOK_SECRET (for `dev webhook`)."""


def build_parser() -> argparse.ArgumentParser:
    """The whole grammar; global options work before or after the command."""
    parser = command_parser("creditwallet", "Operate the credit-wallet ledger.", EPILOG)
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
        description: str = "",
    ) -> argparse.ArgumentParser:
        leaf = group.add_parser(
            name,
            help=summary,
            description=description or summary,
            parents=[late_globals],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        leaf.set_defaults(command_name=f"{parent} {name}".strip())
        return leaf

    leaf = command(commands, "balance", "Show a user's available, held and debt credits and lots.")
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument(
        "--agent", default="", help="also show what is available for debits for this agent"
    )
    leaf.add_argument(
        "--as-of",
        type=_aware_datetime,
        help="the balance at a past moment, ISO 8601 with offset, e.g. 2030-01-31T12:00:00Z",
    )

    leaf = command(
        commands,
        "ensure",
        "Create a user's account with its trial credits, if it does not exist.",
        description="Create a user's account with its trial credits, if it does not exist.\n"
        "Safe to repeat: a later call changes nothing and says the account already existed.\n"
        "With --referral-code, the code is redeemed only when this call creates the account.",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("--referral-code", default="", help="a code to redeem on creation")

    leaf = command(commands, "debit", "Spend a user's credits: an agent's price, or an amount.")
    leaf.add_argument("user", metavar="USER", nargs="?")  # or --file (debitfile.check)
    cost = leaf.add_mutually_exclusive_group()
    cost.add_argument("--agent", help="charge this agent's price times --quantity")
    cost.add_argument("--amount", help="charge this many credits, e.g. 1.5")
    leaf.add_argument("--quantity", type=_positive_int, help="units of --agent (default 1)")
    leaf.add_argument(
        "--for-agent",
        default="",
        help="with --amount: the agent it pays for, so lots restricted to it apply",
    )
    leaf.add_argument("--member", default="", help="the team member that spends (its cap)")
    _add_request_id(leaf)
    debitfile.add_arguments(leaf)

    leaf = command(
        commands,
        "grant",
        "Grant credits to an existing account as a new lot.",
        description="Grant credits to an existing account as a new lot.\n"
        "An unknown USER is refused (a mistyped id never receives credits) unless --create.",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("grant_amount", metavar="AMOUNT", help="credits to grant, e.g. 2.5")
    leaf.add_argument("--source", required=True, choices=list(LOT_SOURCES))
    leaf.add_argument(
        "--expires-at",
        type=_aware_datetime,
        help="ISO 8601 with offset, e.g. 2030-01-31T00:00:00Z (default: the source's lifetime)",
    )
    leaf.add_argument("--reason", default="", help="recorded with the transaction")
    leaf.add_argument(
        "--create", action="store_true", help="create the account (without trial credits)"
    )
    leaf.add_argument(
        "--priority",
        type=_priority,
        help=f"burn-down priority {limits.LOT_PRIORITY_MIN}-{limits.LOT_PRIORITY_MAX}, lower "
        f"burns first (default {limits.LOT_PRIORITY_DEFAULT})",
    )
    leaf.add_argument(
        "--agent",
        action="append",
        default=[],
        dest="agents",
        metavar="AGENT",
        help="restrict the lot to debits for this agent (repeat for several)",
    )
    _add_request_id(leaf)

    overdraft = commands.add_parser("overdraft", help="Set an account's overdraft limit.")
    overdraft_commands = overdraft.add_subparsers(
        dest="overdraft_command", required=True, metavar="overdraft"
    )
    leaf = command(
        overdraft_commands,
        "set",
        "Let a user's debits take the available balance down to -LIMIT, as debt.",
        parent="overdraft",
        description="Let a user's debits take the available balance down to -LIMIT: what the\n"
        "lots do not cover is recorded as debt, which later credits pay first. 0 turns it off\n"
        "(a lower limit undoes no debt; it refuses further debits until the debt is paid down).",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("overdraft_limit", metavar="LIMIT", help="credits, e.g. 10")

    leaf = command(commands, "history", "List a user's transactions, newest first.")
    leaf.add_argument("user", metavar="USER")
    rows = leaf.add_mutually_exclusive_group()
    rows.add_argument(
        "--limit",
        type=_page_size,
        default=limits.CLI_LIST_ROWS_DEFAULT,
        help=f"rows (default {limits.CLI_LIST_ROWS_DEFAULT}, at most {PAGE_SIZE_MAX})",
    )
    rows.add_argument("--all", action="store_true", help="every row, page by page")
    leaf.add_argument("--type", choices=list(TRANSACTION_TYPES))

    prices = commands.add_parser("prices", help="Set or list agent prices.")
    price_commands = prices.add_subparsers(dest="prices_command", required=True, metavar="prices")
    leaf = command(
        price_commands, "set", "Create or replace an agent's price per unit.", parent="prices"
    )
    leaf.add_argument("agent", metavar="AGENT")
    leaf.add_argument("price", metavar="PRICE", help="credits per unit, e.g. 0.25")
    leaf.add_argument(
        "--unit", default=PRICE_UNIT_DEFAULT, help=f"what a unit is (default {PRICE_UNIT_DEFAULT})"
    )
    leaf.add_argument("--inactive", action="store_true", help="refuse debits for the agent")
    command(price_commands, "list", "List all agent prices.", parent="prices")

    command(commands, "stats", "Show totals and the last day's transactions by type.")
    command(commands, "verify", "Check the ledger's invariants; exit 1 on violations.")

    leaf = command(commands, "reverse", "Give a debit's credits back, whole or in part.")
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("transaction_id", metavar="TRANSACTION_ID")
    leaf.add_argument("--amount", help="credits to give back (default: all not yet reversed)")
    leaf.add_argument("--reason", default="", help="recorded with the reversal")
    _add_request_id(leaf)

    leaf = command(
        commands,
        "rollover",
        "Bring every account's bookkeeping up to date for a month, with progress.",
        description="Bring every account's bookkeeping up to date for a month: expiries\n"
        "recorded, the subscription carry-over capped. Safe to repeat or to run twice at once:\n"
        "each account is processed once per month, and a rerun goes on where a stopped one\n"
        "left off. Its deadline is long (--timeout, default "
        f"{limits.CLI_ROLLOVER_TIMEOUT_SECONDS:g} s); a terminal shows a progress bar.",
    )
    leaf.add_argument("period", metavar="PERIOD", nargs="?", default="", help="YYYY-MM")

    leaf = command(commands, "streak", "Show a user's Smart Streak.")
    leaf.add_argument("user", metavar="USER")

    referral = commands.add_parser("referral", help="Show or redeem referral codes.")
    referral_commands = referral.add_subparsers(
        dest="referral_command", required=True, metavar="referral"
    )
    leaf = command(referral_commands, "code", "Show a user's referral code.", parent="referral")
    leaf.add_argument("user", metavar="USER")
    leaf = command(
        referral_commands, "redeem", "Redeem a referral code for a new user.", parent="referral"
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("code", metavar="CODE")
    _add_request_id(leaf)
    events_cli.add_commands(commands, command, _add_request_id)
    teams_cli.add_commands(commands, command, _add_request_id)

    leaf = command(
        commands,
        "completion",
        "Print a shell completion script.",
        description="Print a shell completion script, e.g.\n"
        "  creditwallet completion bash > ~/.local/share/bash-completion/completions/creditwallet\n"
        "  creditwallet completion zsh > ~/.zfunc/_creditwallet",
    )
    leaf.add_argument("shell", choices=list(shtab.SUPPORTED_SHELLS))

    dev = commands.add_parser("dev", help="Tools for a development run (make run).")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True, metavar="dev")
    webhook = dev_commands.add_parser("webhook", help="Send a locally signed Stripe webhook.")
    webhook_commands = webhook.add_subparsers(
        dest="webhook_command", required=True, metavar="webhook"
    )
    leaf = command(
        webhook_commands,
        "top-up",
        "Send a signed checkout.session.completed for a paid top-up to the gateway.",
        parent="dev webhook",
        description="Send the gateway a checkout.session.completed event of a paid one-off\n"
        "purchase, signed with STRIPE_WEBHOOK_SECRET as Stripe signs it. The session names\n"
        "its price in metadata.price_id, which is how the gateway finds the credits when it\n"
        "has no STRIPE_SECRET_KEY to read the line items: the price must be in the catalog.\n"
        "Each call is a new event and a new session, so each grants once.",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument(
        "--price", dest="price_id", required=True, help="a price id of the gateway's catalog"
    )
    leaf.add_argument(
        "--amount-paid",
        type=int,
        default=None,
        help="cents paid (default: the catalog's price, which the gateway holds it to)",
    )
    leaf.add_argument(
        "--url", help="the webhook URL (default: http://$GATEWAY_ADDRESS/stripe/webhook)"
    )
    leaf.add_argument(
        "--secret", help="signing secret (default: $STRIPE_WEBHOOK_SECRET, the first if several)"
    )
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
        "--json",
        action="store_true",
        default=default(False),
        help="print the response as JSON (protobuf JSON mapping)",
    )
    parser.add_argument(
        "--micros",
        action="store_true",
        default=default(False),
        help="type and show amounts as integer micro-credits",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default(None),
        help="deadline of each attempt in seconds (default "
        f"{limits.CLIENT_TIMEOUT_SECONDS_DEFAULT:g}, rollover "
        f"{limits.CLI_ROLLOVER_TIMEOUT_SECONDS:g})",
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


def resolve_amounts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn the amount arguments typed as text into micros, in the unit ``--micros`` chose.

    A malformed, zero or too large amount is a usage error (exit 2) that names the flag.
    """
    for dest, label in AMOUNT_ARGUMENTS.items():
        text = getattr(args, dest, None)
        if text is None:
            continue
        try:
            micros = parse_micros(text) if args.micros else parse_credits(text)
        except ValueError as error:
            parser.error(f"{label}: {error}")
        low, high = AMOUNT_BOUNDS.get(dest, (1, limits.AMOUNT_MICROS_MAX))
        if not low <= micros <= high:
            largest = str(high) if args.micros else format_credits(high)
            smallest = str(low) if args.micros else format_credits(low)
            unit = "micro-credits" if args.micros else "credits"
            parser.error(f"{label} must be between {smallest} and {largest} {unit}, not {text}")
        setattr(args, dest, micros)


def parse_micros(text: str) -> int:
    """A whole number of micro-credits, plain ASCII digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(INT64_MAX)):
        raise ValueError(f"not a whole number of micro-credits: {text!r}")
    return int(text)


def flag_for(command_name: str, field: str) -> str:
    """The flag or positional that sets ``field`` of the command's request (else the field)."""
    return FIELD_FLAGS.get(command_name, {}).get(field) or FIELD_FLAGS[""].get(field) or field


# Argument types: argparse reports their ArgumentTypeError as a usage error (exit 2).


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= limits.QUANTITY_MAX:
        raise argparse.ArgumentTypeError(
            f"not a whole number between 1 and {limits.QUANTITY_MAX}: {text!r}"
        )
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
    if not 0 < seconds <= limits.CLIENT_TIMEOUT_SECONDS_MAX:  # also refuses NaN
        raise argparse.ArgumentTypeError(
            f"not a number of seconds between 0 and {limits.CLIENT_TIMEOUT_SECONDS_MAX:g}: {text!r}"
        )
    return seconds


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not limits.LOT_PRIORITY_MIN <= value <= limits.LOT_PRIORITY_MAX:
        raise argparse.ArgumentTypeError(
            f"not a priority between {limits.LOT_PRIORITY_MIN} and {limits.LOT_PRIORITY_MAX}: "
            f"{text!r}"
        )
    return value


def _aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset (e.g. {text}Z): {text!r}")
    return moment
