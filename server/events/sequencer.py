"""The sequencer: committed events get their global stream position, and their deliveries.

Why a position assigned after commit: a number drawn while the writing transaction runs
follows the order transactions *start* writing, not the order they commit, so a reader
that has seen position 11 could later find a 10 committing behind it and miss it. Here one
pass at a time (the ``event_sequencer`` row is its lock, across replicas) numbers the
events that have committed since the last pass, after the last pass's numbers: what a
reader sees of positions is always a committed prefix, so resuming after a cursor never
skips an event. Within a pass events go in (user_id, seq) order, so an account's positions
follow its sequence numbers.

The same statement queues one delivery per (matching endpoint, event) and marks the
endpoint's lane for the account as due, unless it is waiting out a retry.
"""

from __future__ import annotations

import datetime as dt
import json

from creditwallet.core import limits
from creditwallet.server.db import Connection

_LOCK = "SELECT last_position FROM event_sequencer FOR UPDATE SKIP LOCKED"

_PASS = """
WITH picked AS (
    SELECT user_id, seq, type FROM events WHERE position IS NULL
    ORDER BY user_id, seq LIMIT $2
), numbered AS (
    SELECT user_id, seq, type, $1::bigint + row_number() OVER (ORDER BY user_id, seq) AS pos
    FROM picked
), placed AS (
    UPDATE events e SET position = n.pos FROM numbered n
    WHERE e.user_id = n.user_id AND e.seq = n.seq
    RETURNING e.user_id, e.seq, e.type
), queued AS (
    INSERT INTO webhook_deliveries (endpoint_id, user_id, seq, status, next_attempt_at)
    SELECT ep.endpoint_id, p.user_id, p.seq, 'pending', $3
    FROM placed p JOIN webhook_endpoints ep
      ON ep.active AND (cardinality(ep.types) = 0 OR p.type = ANY (ep.types))
    ON CONFLICT DO NOTHING
    RETURNING endpoint_id, user_id
), lanes AS (
    INSERT INTO webhook_lanes AS l (endpoint_id, user_id, due_at)
    SELECT DISTINCT endpoint_id, user_id, $3::timestamptz FROM queued
    ON CONFLICT (endpoint_id, user_id) DO UPDATE SET due_at = coalesce(l.due_at, EXCLUDED.due_at)
)
UPDATE event_sequencer SET last_position = last_position + (SELECT count(*) FROM placed)
RETURNING last_position, (SELECT count(*) FROM placed) AS placed,
          (SELECT jsonb_object_agg(type, n)::text
           FROM (SELECT type, count(*) AS n FROM placed GROUP BY type) t) AS by_type
"""


async def sequence(
    conn: Connection, now: dt.datetime, batch: int = limits.EVENTS_SEQUENCE_BATCH_MAX
) -> tuple[int, dict[str, int]] | None:
    """One pass in the caller's transaction: (events placed, how many of each type).

    None when another process is running a pass right now.
    """
    last = await conn.fetchval(_LOCK)
    if last is None:
        return None
    row = await conn.fetchrow(_PASS, last, batch, now)
    assert row is not None
    by_type = json.loads(row["by_type"]) if row["by_type"] else {}
    return int(row["placed"]), {str(k): int(v) for k, v in by_type.items()}


async def last_position(conn: Connection) -> int:
    value = await conn.fetchval("SELECT last_position FROM event_sequencer")
    return int(value or 0)
