"""``creditwallet``: the operators' command line for the credit-wallet ledger.

    creditwallet [--target HOST:PORT] [--token T] [--json] [--timeout S] COMMAND ...

Commands: balance, debit, grant, history, prices set|list, stats, verify, reverse, rollover,
streak, referral code|redeem, ensure (``creditwallet COMMAND --help`` for each). Global options
may also follow the command (``creditwallet balance alice --json``).

Amounts are typed and shown as decimal credits and converted exactly (``clients.units``);
``--json`` prints the response message with integer micros. Exit codes: 0 success, 1 ledger
violations found by ``verify``, 2 any error (printed as ``error: REASON: message``).

Why a request_id is generated here and printed: when a mutating call ends with UNAVAILABLE or
DEADLINE_EXCEEDED the operator cannot know whether it was applied; re-running it with the same
``--request-id`` applies it at most once. The token is read from ``ADMIN_TOKEN`` (preferred: a
command-line token is visible to other local users) and is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from creditwallet.client import events_cli, render
from creditwallet.client.arguments import (
    LOT_SOURCES,
    PAGE_SIZE_MAX,
    TRANSACTION_TYPES,
    build_parser,
)
from creditwallet.client.errors import CreditWalletError
from creditwallet.client.messages import new_request_id
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.message import Message

EXIT_OK: Final = 0
EXIT_VIOLATIONS: Final = 1
EXIT_ERROR: Final = 2

TARGET_ENV_VARS: Final = ("LEDGER_TARGET", "GRPC_ADDRESS")
TARGET_DEFAULT: Final = "127.0.0.1:50051"
TOKEN_ENV_VAR: Final = "ADMIN_TOKEN"

# --all and `prices list` follow pages at most this far (500,000 rows): a bound on everything.
PAGES_MAX: Final = 1000


@dataclass(frozen=True)
class Output:
    """What a command shows: the response (for --json), its text form, and the exit code."""

    message: Message
    text: str
    exit_code: int = EXIT_OK


Command = Callable[[CreditWalletClient, argparse.Namespace], Output]


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "quantity", None) is not None and args.agent is None:
            parser.error("--quantity needs --agent")
    except SystemExit as stop:  # --help, or a usage error already printed by argparse
        return stop.code if isinstance(stop.code, int) else EXIT_ERROR
    if getattr(args, "request_id", "") is None:
        args.request_id = new_request_id()
    token = args.token or os.environ.get(TOKEN_ENV_VAR, "")
    if not token:
        return _fail("UNAUTHENTICATED", f"no token: set {TOKEN_ENV_VAR} or pass --token")
    command = COMMANDS[args.command_name]
    try:
        client = _client(args, token)
    except OSError as error:  # an unreadable --tls-* file
        return _fail("FILE_ERROR", str(error))
    except ValueError as error:  # settings refused; the messages never include the token
        return _fail("INVALID_ARGUMENT", str(error))
    try:
        with client:
            output = command(client, args)
    except CreditWalletError as error:
        _fail(error.reason, error.message)
        request_id = getattr(args, "request_id", None)
        if request_id and error.code in _OUTCOME_UNKNOWN_CODES:
            hint = f"re-run with --request-id {request_id} to apply it at most once"
            print(f"hint: {hint}", file=sys.stderr)
        return EXIT_ERROR
    print(render.to_json(output.message) if args.json else output.text)
    return output.exit_code


# After these codes a mutating call may or may not have been applied.
_OUTCOME_UNKNOWN_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)


def _fail(reason: str, message: str) -> int:
    print(f"error: {reason}: {message}", file=sys.stderr)
    return EXIT_ERROR


def _client(args: argparse.Namespace, token: str) -> CreditWalletClient:
    target = args.target or next(
        (os.environ[name] for name in TARGET_ENV_VARS if os.environ.get(name)), TARGET_DEFAULT
    )
    return CreditWalletClient(
        target,
        token,
        timeout_seconds=args.timeout,
        tls=args.tls,
        root_certificates=_read(args.tls_ca),
        private_key=_read(args.tls_key),
        certificate_chain=_read(args.tls_cert),
    )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


# Commands: each calls the client once (or once per page) and says how to show the result.


def _balance(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    balance = client.get_balance(args.user)
    return Output(balance, render.balance_text(balance))


def _ensure(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.ensure_account(args.user, referral_code=args.referral_code)
    created = "created" if response.created else "already existed"
    available = render.credits(response.balance.available_micros)
    text = render.pairs([("account", f"{args.user} ({created})"), ("available", available)])
    return Output(response, text)


def _debit(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.debit(
        args.user,
        agent_id=args.agent,
        quantity=args.quantity,
        amount_micros=args.amount,
        request_id=args.request_id,
    )
    items = [
        ("charged", render.credits(response.charged_micros)),
        ("available", render.credits(response.available_micros)),
        ("transaction", response.transaction_id),
        ("request_id", args.request_id),
        ("replayed", render.yes_no(response.replayed)),
    ]
    if response.HasField("streak_reward"):
        items += render.reward_items(response.streak_reward)
    return Output(response, render.pairs(items))


def _grant(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.grant(
        args.user,
        args.amount,
        LOT_SOURCES[args.source],
        expires_at=args.expires_at,
        request_id=args.request_id,
        metadata=_reason(args),
    )
    items = [
        ("granted", render.credits(response.lot.amount_micros)),
        ("source", args.source),
        ("expires_at", render.timestamp_text(response.lot.expires_at, unset="never")),
        ("available", render.credits(response.available_micros)),
        ("transaction", response.transaction_id),
        ("request_id", args.request_id),
        ("replayed", render.yes_no(response.replayed)),
    ]
    return Output(response, render.pairs(items))


def _reverse(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.reverse_debit(
        args.user,
        args.transaction_id,
        amount_micros=args.amount,
        request_id=args.request_id,
        metadata=_reason(args),
    )
    items = [
        ("reversed", render.credits(response.reversed_micros)),
        ("available", render.credits(response.available_micros)),
        ("transaction", response.transaction_id),
        ("request_id", args.request_id),
        ("replayed", render.yes_no(response.replayed)),
    ]
    return Output(response, render.pairs(items))


def _reason(args: argparse.Namespace) -> dict[str, str] | None:
    return {"reason": args.reason} if args.reason else None


def _history(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    kind = TRANSACTION_TYPES[args.type] if args.type else common_pb2.TRANSACTION_TYPE_UNSPECIFIED
    if not args.all:
        page = client.list_transactions(args.user, page_size=args.limit, type=kind)
        more = "\n(more rows: --all)" if page.next_page_token else ""
        return Output(page, render.transactions_text(page.transactions) + more)
    merged = wallet_pb2.ListTransactionsResponse()
    for _ in range(PAGES_MAX):
        page = client.list_transactions(
            args.user, page_size=PAGE_SIZE_MAX, page_token=merged.next_page_token, type=kind
        )
        merged.transactions.extend(page.transactions)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    return Output(merged, render.transactions_text(merged.transactions))


def _prices_set(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.set_agent_price(
        args.agent, args.price, unit=args.unit, active=not args.inactive
    )
    return Output(response, render.prices_text([response.price]))


def _prices_list(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    merged = admin_pb2.ListAgentPricesResponse()
    for _ in range(PAGES_MAX):
        page = client.list_agent_prices(page_size=PAGE_SIZE_MAX, page_token=merged.next_page_token)
        merged.prices.extend(page.prices)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    return Output(merged, render.prices_text(merged.prices))


def _stats(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    stats = client.get_stats()
    return Output(stats, render.stats_text(stats))


def _verify(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    report = client.verify_ledger()
    exit_code = EXIT_OK if report.ok else EXIT_VIOLATIONS
    return Output(report, render.verify_text(report), exit_code)


def _rollover(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    summary = client.rollover(args.period)
    items = [
        ("period", summary.period),
        ("accounts processed", str(summary.accounts_processed)),
        ("credits carried", render.credits(summary.credits_carried_micros)),
        ("credits expired", render.credits(summary.credits_expired_micros)),
        ("holds released", str(summary.holds_released)),
        ("chunks", str(summary.chunks)),
    ]
    return Output(summary, render.pairs(items))


def _streak(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.get_streak(args.user)
    return Output(response, render.streak_text(response.streak))


def _referral_code(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.get_referral_code(args.user)
    items = [("code", response.code), ("rewards granted", str(response.rewards_granted))]
    return Output(response, render.pairs(items))


def _referral_redeem(client: CreditWalletClient, args: argparse.Namespace) -> Output:
    response = client.redeem_referral_code(args.user, args.code, request_id=args.request_id)
    items = [
        ("granted", render.credits(response.granted_micros)),
        ("available", render.credits(response.available_micros)),
        ("transaction", response.transaction_id),
        ("request_id", args.request_id),
        ("replayed", render.yes_no(response.replayed)),
    ]
    return Output(response, render.pairs(items))


COMMANDS: Final[dict[str, Command]] = {
    "balance": _balance,
    "ensure": _ensure,
    "debit": _debit,
    "grant": _grant,
    "reverse": _reverse,
    "history": _history,
    "prices set": _prices_set,
    "prices list": _prices_list,
    "stats": _stats,
    "verify": _verify,
    "rollover": _rollover,
    "streak": _streak,
    "referral code": _referral_code,
    "referral redeem": _referral_redeem,
}


def _events_command(run: events_cli.Command) -> Command:
    return lambda client, args: Output(*run(client, args))


COMMANDS.update({name: _events_command(run) for name, run in events_cli.COMMANDS.items()})


if __name__ == "__main__":
    sys.exit(main())
