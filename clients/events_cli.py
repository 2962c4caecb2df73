"""``creditwallet events list|replay|endpoints``: the operators' view of the outbox.

Apart from ``clients.cli`` so that the grammar and commands of the events live together;
``clients.arguments`` calls ``add_commands`` and ``clients.cli`` wraps ``COMMANDS``. Each
command returns (response message, text, exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Final

from creditwallet.client import render
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import events_pb2 as epb
from google.protobuf.message import Message
from rich.console import Group, RenderableType
from rich.text import Text

Result = tuple[Message, RenderableType, int]
Command = Callable[[CreditWalletClient, argparse.Namespace], Result]


def add_commands(
    commands: Any, command: Callable[..., argparse.ArgumentParser], add_request_id: Any
) -> None:
    group = commands.add_parser("events", help="List events, replay webhook deliveries.")
    sub = group.add_subparsers(dest="events_command", required=True, metavar="events")
    leaf = command(sub, "list", "List events, newest first.", parent="events")
    leaf.add_argument("--user", default="", help="only this account")
    leaf.add_argument("--type", action="append", default=[], help="only this type (repeatable)")
    leaf.add_argument("--endpoint", default="", help="show deliveries to this endpoint")
    leaf.add_argument(
        "--status",
        default="",
        choices=["", "pending", "delivered", "failed"],
        help="with --endpoint: only deliveries in this status",
    )
    leaf.add_argument(
        "--limit", type=int, default=limits.CLI_LIST_ROWS_DEFAULT, help="rows (1-500)"
    )
    leaf = command(sub, "replay", "Send webhook deliveries again.", parent="events")
    leaf.add_argument("endpoint")
    leaf.add_argument("--event-id", action="append", default=[], help="this event (repeatable)")
    leaf.add_argument("--failed", action="store_true", help="every failed delivery")
    leaf.add_argument("--user", default="", help="the account (with --from-sequence)")
    leaf.add_argument("--from-sequence", type=int, default=0, help="the account's events from N")
    add_request_id(leaf)
    command(sub, "endpoints", "Show webhook endpoints and their failure state.", parent="events")


def _list(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    page = client.admin.ListEvents(
        epb.ListEventsRequest(
            user_id=args.user,
            types=args.type,
            endpoint_id=args.endpoint,
            delivery_status=args.status,
            page_size=args.limit,
        )
    )
    rows = []
    for event in page.events:
        delivery = event.deliveries[0] if event.deliveries else None
        rows.append(
            [
                event.user_id,
                str(event.sequence),
                event.type,
                render.timestamp_text(event.occurred_at),
                event.cursor or "-",
                f"{delivery.status} ({delivery.attempts})" if delivery else "-",
                event.event_id,
            ]
        )
    headers = ["user", "seq", "type", "occurred_at", "cursor", "delivery", "event_id"]
    view: RenderableType = render.table(headers, rows, right=frozenset({1}))
    if page.next_page_token:
        view = Group(view, Text("(more rows: --limit)"))
    return page, view, 0


def _replay(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    reply = client.admin.ReplayEvents(
        epb.ReplayEventsRequest(
            request_id=args.request_id,
            endpoint_id=args.endpoint,
            event_ids=args.event_id,
            failed_only=args.failed,
            user_id=args.user,
            from_sequence=args.from_sequence,
        )
    )
    items = [
        ("queued", str(reply.queued)),
        ("request_id", args.request_id),
        ("replayed", render.yes_no(reply.replayed)),
    ]
    return reply, render.pairs(items), 0


def _endpoints(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    page = client.admin.ListWebhookEndpoints(epb.ListWebhookEndpointsRequest(page_size=500))
    rows = [
        [
            e.endpoint_id,
            "active" if e.active else "removed",
            str(e.consecutive_failures),
            render.timestamp_text(e.failing_since),
            str(e.pending_deliveries),
            str(e.failed_deliveries),
            e.last_error or "-",
        ]
        for e in page.endpoints
    ]
    headers = ["endpoint", "state", "failures", "failing_since", "pending", "failed", "last_error"]
    return page, render.table(headers, rows, right=frozenset({2, 4, 5})), 0


COMMANDS: Final[dict[str, Command]] = {
    "events list": _list,
    "events replay": _replay,
    "events endpoints": _endpoints,
}
