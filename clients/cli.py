"""``creditwallet``: the operators' command line for the credit-wallet ledger.

    creditwallet [--target HOST:PORT] [--token T] [--json] [--micros] [--timeout S] COMMAND ...

Commands: balance, ensure, debit, grant, reverse, history, prices set|list, stats, verify,
rollover, streak, referral code|redeem, usage, members set|list, events list|replay|endpoints,
completion, dev webhook top-up
(``creditwallet COMMAND --help`` for each). Global options may also follow the command.

Exit codes, so that scripts can tell outcomes apart: 0 done; 1 the ledger refused (its reason
is printed, ``error: REASON: message``) or ``verify`` found violations; 2 a usage error (the
command line, a missing token, an unreadable file); 3 no answer (unreachable, or past the
deadline), after which a change may or may not have been applied.

Why a request_id is generated here and printed: after exit 3 the operator cannot know whether
a change was applied; re-running it with the same ``--request-id`` applies it at most once.
The token is read from ``ADMIN_TOKEN`` (preferred: a command-line token is visible to other
local users) and is never printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import shtab
from creditwallet.client import debitfile, devhooks, events_cli, render, teams_cli
from creditwallet.client.arguments import (
    LOT_SOURCES,
    PAGE_SIZE_MAX,
    TRANSACTION_TYPES,
    build_parser,
    flag_for,
    resolve_amounts,
)
from creditwallet.client.builders import new_request_id
from creditwallet.client.errors import (
    AccountNotFound,
    AgentNotFound,
    CreditWalletError,
    InsufficientCredits,
    InvalidArgument,
    Unauthenticated,
)
from creditwallet.client.render import Amounts
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.core import limits, protojson
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import billing_service_pb2 as billing_pb2
from creditwallet.v1 import common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.message import Message
from rich.console import RenderableType
from rich.text import Text

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_ANSWER: Final = 3
EXIT_INTERRUPTED: Final = 130

TARGET_ENV_VARS: Final = ("LEDGER_TARGET", "GRPC_ADDRESS")
TARGET_DEFAULT: Final = "127.0.0.1:50051"
TOKEN_ENV_VAR: Final = "ADMIN_TOKEN"
GATEWAY_ENV_VAR: Final = "GATEWAY_ADDRESS"
GATEWAY_DEFAULT: Final = "127.0.0.1:8080"
WEBHOOK_SECRET_ENV_VAR: Final = "STRIPE_WEBHOOK_SECRET"

# After these codes a change may or may not have been applied: "no answer", exit 3.
_NO_ANSWER_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)


@dataclass(frozen=True)
class Output:
    """What a command shows: the response (for --json), its view, and the exit code."""

    message: Message
    view: RenderableType
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class Session:
    """What a command works with: the client, the parsed line, how amounts are shown, and a
    second, short-deadline client factory (for reads beside a long call)."""

    client: CreditWalletClient
    args: argparse.Namespace
    amounts: Amounts
    short_client: Callable[[], CreditWalletClient]


Command = Callable[[Session], Output]


class UsageError(Exception):
    """The command cannot run as typed (exit 2); the message says what to change."""


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "quantity", None) is not None and args.agent is None:
            parser.error("--quantity needs --agent")
        resolve_amounts(parser, args)
        debitfile.check(parser, args)
    except SystemExit as stop:  # --help, or a usage error already printed by argparse
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    if getattr(args, "request_id", "") is None:
        args.request_id = new_request_id()
    try:
        if args.command_name == "completion":
            print(shtab.complete(parser, shell=args.shell), end="")
            return EXIT_OK
        if args.command_name == "dev webhook top-up":
            return _dev_webhook_top_up(args)
        return _run_ledger_command(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_ledger_command(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV_VAR, "")
    if not token:
        raise UsageError(f"no token: set {TOKEN_ENV_VAR} or pass --token")
    amounts = Amounts(micros=args.micros)
    default_timeout = (
        limits.CLI_ROLLOVER_TIMEOUT_SECONDS
        if args.command_name == "rollover"
        else limits.CLIENT_TIMEOUT_SECONDS_DEFAULT
    )
    client = _client(args, token, args.timeout or default_timeout)
    session = Session(
        client,
        args,
        amounts,
        lambda: _client(args, token, args.timeout or limits.CLIENT_TIMEOUT_SECONDS_DEFAULT),
    )
    try:
        with client:
            output = COMMANDS[args.command_name](session)
    except CreditWalletError as error:
        return _report(error, args, amounts)
    if args.json:
        print(protojson.to_json(output.message))
    else:
        render.show(output.view)
    return output.exit_code


def _report(error: CreditWalletError, args: argparse.Namespace, amounts: Amounts) -> int:
    """Print why the ledger refused, in the operator's terms; the exit code for it."""
    no_answer = error.code in _NO_ANSWER_CODES
    message, hints = _explain(error, args, amounts)
    request_id = getattr(args, "request_id", None)
    if no_answer and request_id:
        hints.append(f"re-run with --request-id {request_id} to apply it at most once")
    if args.json:
        body = {
            "error": {
                "code": error.code.name,
                "reason": error.reason,
                "message": message,
                "metadata": error.metadata,
            }
        }
        print(json.dumps(body, indent=2, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {error.reason}: {message}", file=sys.stderr)
        for hint in hints:
            print(f"hint: {hint}", file=sys.stderr)
    return EXIT_NO_ANSWER if no_answer else EXIT_REFUSED


def _explain(
    error: CreditWalletError, args: argparse.Namespace, amounts: Amounts
) -> tuple[str, list[str]]:
    command = args.command_name
    if isinstance(error, InsufficientCredits):
        available = amounts.text(error.available_micros)
        required = amounts.text(error.required_micros)
        return f"{available} available, {required} required", []
    if isinstance(error, InvalidArgument):
        message = error.message
        if error.field:
            flag = flag_for(command, error.field)
            message = re.sub(rf"\b{re.escape(error.field)}\b", flag, message)
            if flag not in message:
                message = f"{flag}: {message}"
        return message, []
    if isinstance(error, AccountNotFound):
        user = getattr(args, "user", "")
        if command == "grant":
            return f"no account for {user!r}", ["pass --create to create it with this grant"]
        return f"no account for {user!r}", [f"creditwallet ensure {user} creates it"]
    if isinstance(error, AgentNotFound):
        agent = getattr(args, "agent", "")
        return f"no price for agent {agent!r}", [f"creditwallet prices set {agent} PRICE sets one"]
    if isinstance(error, Unauthenticated):
        return "the token was refused", [f"set {TOKEN_ENV_VAR} to the server's admin token"]
    if error.code in _NO_ANSWER_CODES:
        first = (error.message.splitlines() or [error.code.name])[0]
        return f"no answer from the ledger at {_target(args)}: {first}", []
    return error.message, []


def _target(args: argparse.Namespace) -> str:
    return str(
        args.target
        or next(
            (os.environ[name] for name in TARGET_ENV_VARS if os.environ.get(name)), TARGET_DEFAULT
        )
    )


def _client(args: argparse.Namespace, token: str, timeout: float) -> CreditWalletClient:
    try:
        return CreditWalletClient(
            _target(args),
            token,
            timeout_seconds=timeout,
            tls=args.tls,
            root_certificates=_read(args.tls_ca, "--tls-ca"),
            private_key=_read(args.tls_key, "--tls-key"),
            certificate_chain=_read(args.tls_cert, "--tls-cert"),
        )
    except ValueError as error:  # settings refused; the messages never include the token
        raise UsageError(str(error)) from None


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{flag} {path}: {error.strerror}") from None


# Commands: each calls the client once (or once per page) and says how to show the result.


def _balance(s: Session) -> Output:
    reply = s.client.get_balance(s.args.user, agent_id=s.args.agent, as_of=s.args.as_of)
    return Output(reply, render.balance(reply, s.amounts, agent_id=s.args.agent))


def _ensure(s: Session) -> Output:
    reply = s.client.ensure_account(s.args.user, referral_code=s.args.referral_code)
    created = "created" if reply.created else "already existed"
    items = [
        ("account", f"{s.args.user} ({created})"),
        ("available", s.amounts.text(reply.balance.available_micros)),
    ]
    return Output(reply, render.pairs(items))


def _debit(s: Session) -> Output:
    if s.args.file is not None:
        return _debit_file(s)
    reply = s.client.debit(
        s.args.user,
        agent_id=s.args.agent,
        quantity=s.args.quantity,
        amount_micros=s.args.amount,
        request_id=s.args.request_id,
        for_agent_id=s.args.for_agent,
        member_id=s.args.member,
    )
    items = [
        ("charged", s.amounts.text(reply.charged_micros)),
        ("available", s.amounts.text(reply.available_micros)),
        ("transaction", reply.transaction_id),
        ("request_id", s.args.request_id),
        ("replayed", render.yes_no(reply.replayed)),
    ]
    if reply.HasField("streak_reward"):
        items += render.reward_items(reply.streak_reward, s.amounts)
    return Output(reply, render.pairs(items))


def _debit_file(s: Session) -> Output:
    try:
        requests = debitfile.read(s.args.file, micros=s.args.micros)
    except debitfile.FileError as error:
        raise UsageError(str(error)) from None
    reply = debitfile.send(s.client, requests)
    view, all_done = debitfile.view(requests, reply, s.amounts)
    return Output(reply, view, EXIT_OK if all_done else EXIT_REFUSED)


def _grant(s: Session) -> Output:
    reply = s.client.grant(
        s.args.user,
        s.args.grant_amount,
        LOT_SOURCES[s.args.source],
        expires_at=s.args.expires_at,
        request_id=s.args.request_id,
        metadata=_reason(s.args),
        create_account=s.args.create,
        priority=s.args.priority,
        agent_ids=s.args.agents,
    )
    items = [
        ("granted", s.amounts.text(reply.lot.amount_micros)),
        ("source", s.args.source),
        ("expires_at", render.timestamp_text(reply.lot.expires_at, unset="never")),
        ("priority", str(reply.lot.priority)),
        ("agents", ", ".join(reply.lot.agent_ids) or "any"),
        ("available", s.amounts.text(reply.available_micros)),
        ("transaction", reply.transaction_id),
        ("request_id", s.args.request_id),
        ("replayed", render.yes_no(reply.replayed)),
    ]
    return Output(reply, render.pairs(items))


def _overdraft_set(s: Session) -> Output:
    reply = s.client.set_overdraft_limit(s.args.user, s.args.overdraft_limit)
    items = [
        ("overdraft limit", s.amounts.text(reply.limit_micros)),
        ("available", s.amounts.text(reply.available_micros)),
        ("debt", s.amounts.text(reply.debt_micros)),
    ]
    return Output(reply, render.pairs(items))


def _reverse(s: Session) -> Output:
    reply = s.client.reverse_debit(
        s.args.user,
        s.args.transaction_id,
        amount_micros=s.args.amount,
        request_id=s.args.request_id,
        metadata=_reason(s.args),
    )
    items = [
        ("reversed", s.amounts.text(reply.reversed_micros)),
        ("available", s.amounts.text(reply.available_micros)),
        ("transaction", reply.transaction_id),
        ("request_id", s.args.request_id),
        ("replayed", render.yes_no(reply.replayed)),
    ]
    return Output(reply, render.pairs(items))


def _reason(args: argparse.Namespace) -> dict[str, str] | None:
    return {"reason": args.reason} if args.reason else None


def _history(s: Session) -> Output:
    args = s.args
    kind = TRANSACTION_TYPES[args.type] if args.type else common_pb2.TRANSACTION_TYPE_UNSPECIFIED
    if not args.all:
        page = s.client.list_transactions(args.user, page_size=args.limit, type=kind)
        view = render.transactions(page.transactions, s.amounts)
        if page.next_page_token:
            view = render.stack(view, Text("more rows: --all, or a larger --limit"))
        return Output(page, view)
    merged = wallet_pb2.ListTransactionsResponse()
    for _ in range(limits.CLI_PAGES_MAX):
        page = s.client.list_transactions(
            args.user, page_size=PAGE_SIZE_MAX, page_token=merged.next_page_token, type=kind
        )
        merged.transactions.extend(page.transactions)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    return Output(merged, render.transactions(merged.transactions, s.amounts))


def _prices_set(s: Session) -> Output:
    reply = s.client.set_agent_price(
        s.args.agent, s.args.price, unit=s.args.unit, active=not s.args.inactive
    )
    return Output(reply, render.prices([reply.price], s.amounts))


def _prices_list(s: Session) -> Output:
    merged = admin_pb2.ListAgentPricesResponse()
    for _ in range(limits.CLI_PAGES_MAX):
        page = s.client.list_agent_prices(
            page_size=PAGE_SIZE_MAX, page_token=merged.next_page_token
        )
        merged.prices.extend(page.prices)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    return Output(merged, render.prices(merged.prices, s.amounts))


def _stats(s: Session) -> Output:
    reply = s.client.get_stats()
    return Output(reply, render.stats(reply, s.amounts))


def _verify(s: Session) -> Output:
    report = s.client.verify_ledger()
    exit_code = EXIT_OK if report.ok else EXIT_REFUSED
    return Output(report, render.verify(report), exit_code)


def _rollover(s: Session) -> Output:
    enabled = sys.stderr.isatty()
    with render.rollover_progress(s.args.period, enabled=enabled) as progress:
        task = progress.add_task("rollover", total=None)

        def show(rolled_over: int, total: int) -> None:
            progress.update(task, completed=rolled_over, total=max(total, rolled_over))

        with s.short_client() as reader:
            summary = watch_rollover(s.client, reader, s.args.period, show)
    return Output(summary, render.rollover(summary, s.amounts))


def watch_rollover(
    client: CreditWalletClient,
    reader: CreditWalletClient,
    period: str,
    report: Callable[[int, int], None],
    poll_seconds: float = limits.CLI_PROGRESS_POLL_SECONDS,
) -> billing_pb2.RolloverResponse:
    """Run the Rollover on ``client`` while ``reader`` reads its progress every
    ``poll_seconds``; ``report(rolled_over, total)`` gets each reading, and one at the end.

    The progress counts committed accounts of the month, whichever run committed them, so it
    is true even when another run (a cron) works on the same month at the same time. A failed
    reading is skipped: the bar is a view, the Rollover's own answer is what counts.
    """
    result: concurrent.futures.Future[billing_pb2.RolloverResponse] = concurrent.futures.Future()

    def call() -> None:
        try:
            result.set_result(client.rollover(period))
        except BaseException as error:
            result.set_exception(error)

    # A daemon thread, so that Ctrl-C ends the command at once (the server then stops the
    # rollover after the chunk in flight; a rerun goes on from there).
    threading.Thread(target=call, name="rollover", daemon=True).start()
    while True:
        try:
            summary = result.result(timeout=poll_seconds)
        except concurrent.futures.TimeoutError:
            _read_progress(reader, period, report)
            continue
        _read_progress(reader, summary.period, report)
        return summary


def _read_progress(
    reader: CreditWalletClient, period: str, report: Callable[[int, int], None]
) -> None:
    try:
        progress = reader.get_rollover_progress(period)
    except CreditWalletError:
        return
    report(progress.accounts_rolled_over, progress.accounts_total)


def _streak(s: Session) -> Output:
    reply = s.client.get_streak(s.args.user)
    return Output(reply, render.streak(reply.streak, s.amounts))


def _referral_code(s: Session) -> Output:
    reply = s.client.get_referral_code(s.args.user)
    items = [("code", reply.code), ("rewards granted", str(reply.rewards_granted))]
    return Output(reply, render.pairs(items))


def _referral_redeem(s: Session) -> Output:
    reply = s.client.redeem_referral_code(s.args.user, s.args.code, request_id=s.args.request_id)
    items = [
        ("granted", s.amounts.text(reply.granted_micros)),
        ("available", s.amounts.text(reply.available_micros)),
        ("transaction", reply.transaction_id),
        ("request_id", s.args.request_id),
        ("replayed", render.yes_no(reply.replayed)),
    ]
    return Output(reply, render.pairs(items))


def _dev_webhook_top_up(args: argparse.Namespace) -> int:
    """Sign and send a paid top-up checkout; exit 0 if the gateway applied it, 1 if it
    refused it (its reason is printed), 3 if it did not answer."""
    secret = args.secret or os.environ.get(WEBHOOK_SECRET_ENV_VAR, "").split(",")[0].strip()
    if not secret:
        raise UsageError(f"no signing secret: set {WEBHOOK_SECRET_ENV_VAR} or pass --secret")
    url = args.url or (
        f"http://{os.environ.get(GATEWAY_ENV_VAR) or GATEWAY_DEFAULT}{devhooks.WEBHOOK_PATH}"
    )
    paid = args.amount_paid
    if paid is None:
        paid = devhooks.catalog_price(args.price_id, os.environ.get("CATALOG_PATH") or None)
    event = devhooks.top_up_event(args.user, args.price_id, paid)
    try:
        delivery = devhooks.send(url, secret, event)
    except devhooks.GatewayUnreachable as error:
        print(f"error: UNAVAILABLE: {error}", file=sys.stderr)
        return EXIT_NO_ANSWER
    body = {"event": event["id"], "status": delivery.status, **delivery.body}
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    elif 200 <= delivery.status < 300:
        result = delivery.body.get("result", {})
        items = [
            ("event", event["id"]),
            ("gateway", f"{delivery.status} {delivery.body.get('method', '')}".strip()),
            ("granted", Amounts(args.micros).text(int(result.get("grantedMicros", "0")))),
            ("transaction", str(result.get("transactionId", ""))),
        ]
        render.show(render.pairs(items))
    if 200 <= delivery.status < 300:
        return EXIT_OK
    reason = delivery.body.get("reason") or delivery.body.get("error") or "refused"
    print(f"error: gateway answered {delivery.status}: {reason}", file=sys.stderr)
    return EXIT_REFUSED


COMMANDS: Final[dict[str, Command]] = {
    "balance": _balance,
    "ensure": _ensure,
    "debit": _debit,
    "grant": _grant,
    "overdraft set": _overdraft_set,
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
# Commands that need no ledger connection (and no token).
LOCAL_COMMANDS: Final = frozenset({"completion", "dev webhook top-up"})


def _events_command(run: events_cli.Command) -> Command:
    def command(s: Session) -> Output:
        return Output(*run(s.client, s.args))

    return command


COMMANDS.update({name: _events_command(run) for name, run in events_cli.COMMANDS.items()})
COMMANDS.update({name: _events_command(run) for name, run in teams_cli.COMMANDS.items()})


if __name__ == "__main__":
    sys.exit(main())
