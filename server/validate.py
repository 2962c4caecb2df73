"""Request validation: malformed input is refused before any transaction opens.

Everything here raises ``INVALID_ARGUMENT`` (never stored under the request_id) with the
offending field in the ErrorInfo metadata.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence

from creditwallet.core import limits
from creditwallet.server import errors
from google.protobuf.timestamp_pb2 import Timestamp

_ID = re.compile(r"[A-Za-z0-9._:@-]+")


def user_id(value: str, field: str = "user_id") -> str:
    return identifier(value, field, limits.USER_ID_LENGTH_MAX)


def agent_id(value: str, field: str = "agent_id") -> str:
    return identifier(value, field, limits.AGENT_ID_LENGTH_MAX)


def optional_member_id(value: str) -> str | None:
    """A debit's or hold's member: empty for the account itself."""
    return identifier(value, "member_id", limits.MEMBER_ID_LENGTH_MAX) if value else None


def identifier(value: str, field: str, length_max: int) -> str:
    if not 1 <= len(value) <= length_max or not _ID.fullmatch(value):
        raise errors.invalid(field, f"{field} must be 1-{length_max} chars of [A-Za-z0-9._:@-]")
    return value


def request_id(value: str) -> str:
    if not 1 <= len(value) <= limits.REQUEST_ID_LENGTH_MAX or not value.isprintable():
        raise errors.invalid(
            "request_id", f"request_id must be 1-{limits.REQUEST_ID_LENGTH_MAX} printable chars"
        )
    return value


def text(value: str, field: str, length_max: int) -> str:
    if len(value) > length_max or "\x00" in value:
        raise errors.invalid(field, f"{field} must be at most {length_max} chars, without NUL")
    return value


def amount(value: int, field: str = "amount_micros") -> int:
    if not 0 < value <= limits.AMOUNT_MICROS_MAX:
        raise errors.invalid(field, f"{field} must be between 1 and {limits.AMOUNT_MICROS_MAX}")
    return value


def metadata(value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > limits.METADATA_KEYS_MAX:
        raise errors.invalid("metadata", f"at most {limits.METADATA_KEYS_MAX} metadata keys")
    for key, item in value.items():
        text(key, "metadata", limits.METADATA_KEY_LENGTH_MAX)
        text(item, "metadata", limits.METADATA_VALUE_LENGTH_MAX)
        if not key:
            raise errors.invalid("metadata", "metadata keys must not be empty")
    return dict(value)


def cost(
    agent: str, quantity: int | None, amount_micros: int
) -> tuple[str | None, int | None, int | None]:
    """Exactly one of (agent_id[, quantity]) or amount_micros; returns (agent, qty, amount)."""
    if agent and amount_micros:
        raise errors.invalid("amount_micros", "give either agent_id or amount_micros, not both")
    if agent:
        qty = 1 if quantity is None else quantity
        if not 0 < qty <= limits.QUANTITY_MAX:
            raise errors.invalid(
                "quantity", f"quantity must be between 1 and {limits.QUANTITY_MAX}"
            )
        return agent_id(agent), qty, None
    if quantity is not None:
        raise errors.invalid("quantity", "quantity needs agent_id")
    if not amount_micros:
        raise errors.invalid("amount_micros", "give agent_id or a positive amount_micros")
    return None, None, amount(amount_micros)


def priority(value: int | None) -> int:
    """A lot's burn-down priority; unset is the default of every lot."""
    if value is None:
        return limits.LOT_PRIORITY_DEFAULT
    if not limits.LOT_PRIORITY_MIN <= value <= limits.LOT_PRIORITY_MAX:
        raise errors.invalid(
            "priority",
            f"priority must be between {limits.LOT_PRIORITY_MIN} and {limits.LOT_PRIORITY_MAX}",
        )
    return value


def agent_ids(values: Sequence[str]) -> tuple[str, ...]:
    """The agents a lot may pay for: distinct agent ids, sorted; empty for any."""
    if len(values) > limits.LOT_AGENT_IDS_MAX:
        raise errors.invalid("agent_ids", f"at most {limits.LOT_AGENT_IDS_MAX} agent_ids")
    return tuple(sorted({agent_id(v, "agent_ids") for v in values}))


def overdraft_limit(value: int) -> int:
    if not 0 <= value <= limits.OVERDRAFT_LIMIT_MICROS_MAX:
        raise errors.invalid(
            "limit_micros",
            f"limit_micros must be between 0 and {limits.OVERDRAFT_LIMIT_MICROS_MAX}",
        )
    return value


def page_size(value: int, default: int) -> int:
    if value == 0:
        return default
    if not 0 < value <= limits.PAGE_SIZE_MAX:
        raise errors.invalid("page_size", f"page_size must be between 1 and {limits.PAGE_SIZE_MAX}")
    return value


def bounded(value: int, field: str, default: int, maximum: int) -> int:
    """A count the caller chooses: 0 for ``default``, else 1 to ``maximum``."""
    if value == 0:
        return default
    if not 0 < value <= maximum:
        raise errors.invalid(field, f"{field} must be between 1 and {maximum}")
    return value


def hold_id(value: str) -> uuid.UUID:
    try:
        if len(value) > limits.HOLD_ID_LENGTH_MAX:
            raise ValueError(value)
        return uuid.UUID(value)
    except ValueError:
        raise errors.invalid("hold_id", "hold_id is malformed") from None


def transaction_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= limits.INT64_MAX:
        raise errors.invalid("transaction_id", "transaction_id is malformed")
    return int(value)


def ttl_seconds(value: int) -> int:
    if value == 0:
        return limits.HOLD_TTL_SECONDS_DEFAULT
    if not 0 < value <= limits.HOLD_TTL_SECONDS_MAX:
        raise errors.invalid(
            "ttl_seconds", f"ttl_seconds must be between 1 and {limits.HOLD_TTL_SECONDS_MAX}"
        )
    return value


# Timestamps a ledger can mean: anything outside is a malformed request, not a date.
TIMESTAMP_MIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
TIMESTAMP_MAX = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def timestamp(value: Timestamp, field: str) -> dt.datetime:
    try:
        moment = value.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise errors.invalid(field, f"{field} is out of range") from None
    if not TIMESTAMP_MIN <= moment < TIMESTAMP_MAX:
        raise errors.invalid(field, f"{field} must be between 2000 and 2200")
    return moment


def utc_day(value: Timestamp, field: str) -> dt.date:
    """A timestamp that must be a UTC midnight (reports count whole UTC days)."""
    moment = timestamp(value, field)
    if value.nanos or moment.time() != dt.time(0):
        raise errors.invalid(field, f"{field} must be a UTC midnight (reports count whole days)")
    return moment.date()
