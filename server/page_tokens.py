"""Opaque page tokens: a JSON list behind a prefix, in base64url without padding.

Why one module: several listings page by keyset, and whatever a caller sends as a token must
be refused with INVALID_ARGUMENT, never INTERNAL — bad base64, bad JSON, JSON nested past the
parser's recursion limit, strings PostgreSQL cannot store (a NUL, a lone surrogate). ``decode``
refuses all of that once; each listing then checks its own fields against its request.
A page is bounded in bytes as well as in rows (``fitting``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

from creditwallet.core import limits
from creditwallet.server import errors
from google.protobuf.message import Message

# A row's bytes inside its page message: its own, plus the field's tag and length prefix.
_ROW_FRAMING_BYTES_MAX = 1 + 4


def fitting(rows: Sequence[Message], bytes_max: int = limits.PAGE_BYTES_MAX) -> int:
    """How many of the leading rows one page holds (at least one): a listing ends its page
    early, with a token to the next row, rather than answer more than a client may receive."""
    total = 0
    for index, row in enumerate(rows):
        total += row.ByteSize() + _ROW_FRAMING_BYTES_MAX
        if total > bytes_max and index > 0:
            return index
    return len(rows)


def encode(prefix: str, *fields: object) -> str:
    raw = json.dumps([prefix, *fields]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, prefix: str, length_max: int) -> list[object]:
    """The fields after ``prefix``; INVALID_ARGUMENT on ``page_token`` for anything else."""
    if len(token) > length_max:
        raise errors.invalid("page_token", "page_token is too long")
    try:
        items = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, RecursionError, binascii.Error):
        raise errors.invalid("page_token", "page_token is malformed") from None
    if not isinstance(items, list) or not items or items[0] != prefix:
        raise errors.invalid("page_token", "page_token does not belong to this request")
    for item in items:
        if isinstance(item, str) and not _storable(item):
            raise errors.invalid("page_token", "page_token is malformed")
    return items[1:]


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
