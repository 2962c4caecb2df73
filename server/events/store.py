"""Reading the outbox, and the one way code paths write to it (``emit``).

Ledger changes write their events through triggers; what no ledger row records (a payment
failure reported by the provider) is written here, through the same SQL function, so its
sequence number comes from the same per-account counter.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from creditwallet.core import limits
from creditwallet.server import convert, errors, page_tokens, validate
from creditwallet.server.db import Connection
from creditwallet.server.events.types import EVENT_TYPES
from creditwallet.v1 import events_pb2 as epb

_EMIT = "SELECT cw_emit_event($1, $2, $3, $4::jsonb, true)"

EVENT_COLUMNS = (
    "e.user_id, e.seq, e.event_id, e.type, e.occurred_at, e.body::text AS body, e.position"
)


async def emit(
    conn: Connection, user_id: str, type_: str, now: dt.datetime, body: Mapping[str, Any]
) -> None:
    """Write one event in the caller's transaction (it locks the account first)."""
    assert type_ in EVENT_TYPES, type_
    await conn.execute(_EMIT, user_id, type_, now, json.dumps(dict(body), sort_keys=True))


def event_message(row: asyncpg.Record) -> epb.Event:
    position = row["position"]
    return epb.Event(
        event_id=row["event_id"],
        user_id=row["user_id"],
        sequence=row["seq"],
        type=row["type"],
        occurred_at=convert.timestamp(row["occurred_at"]),
        data_json=row["body"],
        cursor=str(position) if position is not None else "",
    )


def payload(row: asyncpg.Record) -> str:
    """The webhook body: the event's envelope and its data, as compact JSON."""
    envelope = {
        "id": row["event_id"],
        "type": row["type"],
        "timestamp": row["occurred_at"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "user_id": row["user_id"],
        "sequence": row["seq"],
        "cursor": str(row["position"]) if row["position"] is not None else "",
        "data": json.loads(row["body"]),
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


def parse_cursor(cursor: str, field: str = "after_cursor") -> int:
    if not cursor:
        return 0
    if len(cursor) > limits.EVENT_CURSOR_LENGTH_MAX or not cursor.isascii() or not cursor.isdigit():
        raise errors.invalid(field, f"{field} must be a cursor returned with an event")
    value = int(cursor)
    if value > limits.INT64_MAX:
        raise errors.invalid(field, f"{field} is out of range")
    return value


def parse_types(types: Sequence[str]) -> list[str]:
    if len(types) > limits.EVENT_TYPES_FILTER_MAX:
        raise errors.invalid("types", f"at most {limits.EVENT_TYPES_FILTER_MAX} types")
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        shown = unknown[0][: limits.EVENT_TYPE_LENGTH_MAX]
        raise errors.invalid("types", f"unknown event type {shown!r}")
    return sorted(set(types))


def optional_user(user_id: str) -> str | None:
    return validate.user_id(user_id) if user_id else None


# ListEvents pages: newest first, keyset on (seq) for one account or (position) for all.
_TOKEN_PREFIX = "e1"


def encode_page_token(scope: str, before: int) -> str:
    return page_tokens.encode(_TOKEN_PREFIX, scope, before)


def decode_page_token(token: str, scope: str) -> int:
    fields = page_tokens.decode(token, _TOKEN_PREFIX, limits.PAGE_TOKEN_LENGTH_MAX)
    if len(fields) != 2:
        raise errors.invalid("page_token", "page_token does not belong to this request")
    token_scope, before = fields
    if (
        token_scope != scope
        or not isinstance(before, int)
        or isinstance(before, bool)
        or not 0 < before <= limits.INT64_MAX
    ):
        raise errors.invalid("page_token", "page_token does not belong to this request")
    return before
