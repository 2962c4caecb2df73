"""Hypothesis strategies that build any request message of the API from its descriptor.

Why from the descriptor: every field of every RPC is covered, including fields added later,
without a hand-written strategy to forget. Each field type gets the values that break
services: empty, boundary and oversized strings, unicode and NULs, ids that almost match
the id grammar, zero/negative/boundary/int64-extreme numbers, unknown enum values, nonsense
timestamps (nanos out of range, seconds beyond year 9999), maps with too many or hostile
keys. Known-good values (an existing account, a priced agent, a live hold id) are mixed in,
so requests also get past validation and reach the ledger's own checks.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from creditwallet.core import limits
from google.protobuf import descriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests.harness import Ledger

FD = descriptor.FieldDescriptor
# A field or message descriptor. Typed loosely on purpose: protobuf's stubs tell the upb and
# the pure-Python descriptor classes apart, and Optional[...] every nested type.
Descriptor = Any
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
ID_ALPHABET = string.ascii_letters + string.digits + "._:@-"
STRING_SIZE_MAX = 2_000  # oversized for every id; well under the message size limit


def hostile_strings(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    boundary = [
        "",
        " ",
        "\x00",
        "a\x00b",
        "a" * 128,
        "a" * 129,
        "a" * 256,
        "a" * STRING_SIZE_MAX,
        "é",
        "\U0001d518ser",
        "\u202e",
        "../../etc/passwd",
        "'; DROP TABLE credits; --",
        "%%%",
        "====",
        "-1",
        "0",
        "9" * 30,
        "00000000-0000-0000-0000-000000000000",
        "00000000-0000-4000-8000-000000000000",
        "2026-13",
        "9999-12",
        "0000-00",
        "2026-1",
    ]
    return st.one_of(
        st.sampled_from([*boundary, *known]),
        st.text(max_size=64),
        st.text(alphabet=ID_ALPHABET, min_size=1, max_size=130),
        # Long strings by repetition: cheap to draw, still oversized and unicode.
        st.builds(
            lambda piece, times: piece * times,
            st.text(min_size=1, max_size=8),
            st.integers(16, 250),
        ),
    )


def int_values(low: int, high: int, extra: Sequence[int] = ()) -> st.SearchStrategy[int]:
    edges = [v for v in (low, low + 1, -1, 0, 1, 2, high - 1, high, *extra) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def int64_values() -> st.SearchStrategy[int]:
    amount_max = limits.AMOUNT_MICROS_MAX
    return int_values(
        INT64_MIN,
        INT64_MAX,
        (amount_max, amount_max + 1, limits.QUANTITY_MAX, limits.QUANTITY_MAX + 1, 2**62, 10**6),
    )


def timestamp_values() -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries(
        {
            "seconds": int_values(INT64_MIN, INT64_MAX, (253_402_300_800, -62_135_596_801)),
            "nanos": int_values(INT32_MIN, INT32_MAX, (999_999_999, 1_000_000_000)),
        }
    )


def field_values(field: Descriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    single = _single_value(field, known)
    if field.is_repeated and not _is_map(field):
        return st.lists(single, max_size=20)
    return single


def _single_value(field: Descriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    if _is_map(field):
        entry = field.message_type
        keys = field_values(entry.fields_by_name["key"], known)
        values = field_values(entry.fields_by_name["value"], known)
        return st.dictionaries(keys, values, max_size=limits.METADATA_KEYS_MAX + 4)
    if field.type == FD.TYPE_STRING:
        return hostile_strings(known)
    if field.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return int64_values()
    if field.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return int_values(INT32_MIN, INT32_MAX, (limits.PAGE_SIZE_MAX + 1, 86_401))
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return int_values(INT32_MIN, INT32_MAX, (*numbers, max(numbers) + 1))
    if (
        field.type == FD.TYPE_MESSAGE
        and field.message_type.full_name == "google.protobuf.Timestamp"
    ):
        return timestamp_values()
    if field.type == FD.TYPE_MESSAGE:
        return message_values(field.message_type, known)
    raise NotImplementedError(f"no strategy for {field.full_name}")


def _is_map(field: Descriptor) -> bool:
    return bool(field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry)


def message_values(message: Descriptor, known: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of field name -> value; each field may be left unset."""
    return st.fixed_dictionaries(
        {},
        optional={field.name: field_values(field, known) for field in message.fields},
    )


def fill(message: Message, values: dict[str, Any]) -> Message:
    """Write ``values`` (from ``message_values``) into ``message``; returns it."""
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if _is_map(field):
            getattr(message, name).update(value)
        elif field.is_repeated and field.type == FD.TYPE_MESSAGE:
            for item in value:
                fill(getattr(message, name).add(), item)
        elif field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == FD.TYPE_MESSAGE and isinstance(value, dict):
            fill(getattr(message, name), value)
            getattr(message, name).SetInParent()
        else:
            setattr(message, name, value)
    return message


def requests(request_type: type[Message], known: Sequence[str]) -> st.SearchStrategy[Message]:
    return message_values(request_type.DESCRIPTOR, known).map(
        lambda values: fill(request_type(), values)
    )


# Counts and sums of everything a request could change: equal before and after means it
# changed nothing.
SNAPSHOT = """
SELECT (SELECT count(*) FROM credits) AS accounts,
       (SELECT coalesce(sum(balance_micros), 0) FROM credits) AS balances,
       (SELECT coalesce(sum(held_micros), 0) FROM credits) AS held,
       (SELECT count(*) FROM credit_lots) AS lots,
       (SELECT coalesce(sum(remaining_micros), 0) FROM credit_lots) AS remaining,
       (SELECT count(*) FROM credit_transactions) AS transactions,
       (SELECT coalesce(sum(amount_micros), 0) FROM credit_transactions) AS moved,
       (SELECT count(*) FROM holds) AS holds,
       (SELECT count(*) FROM holds WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM agent_pricing) AS prices,
       (SELECT coalesce(sum(price_micros), 0) FROM agent_pricing) AS price_sum,
       (SELECT count(*) FROM user_activity) AS activity,
       (SELECT count(*) FROM referral_codes) AS referral_codes,
       (SELECT count(*) FROM idempotency_records) AS idempotency
"""


async def snapshot(ledger: Ledger) -> dict[str, Any]:
    """The figures of SNAPSHOT, read on the ledger's own pool."""
    async with ledger.pool.acquire() as conn:
        row = await conn.fetchrow(SNAPSHOT)
    assert row is not None
    return dict(row)
