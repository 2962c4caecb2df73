"""What the console's forms say, read into checked values before anything is sent.

A field that cannot be read (an amount that is not plain decimal credits, a date that is
not a date) is refused here with a sentence naming it; everything else is the ledger's to
judge, and its refusal is shown as its reason in words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping

from creditwallet.core import limits
from creditwallet.core.units import format_credits, parse_credits
from creditwallet.v1 import common_pb2

GRANT_SOURCES = ("promo", "adjustment", "top_up", "trial", "referral", "streak", "subscription")
NOTE_KEY = "note"


class FormError(ValueError):
    """A field the console could not read; the message is for the operator."""


def source_value(name: str) -> common_pb2.LotSource.ValueType:
    if name not in GRANT_SOURCES:
        raise FormError(f"source must be one of {', '.join(GRANT_SOURCES)}")
    return common_pb2.LotSource.Value("LOT_SOURCE_" + name.upper())


def credits(text: str, field: str, *, required: bool = True) -> int | None:
    text = text.strip()
    if not text and not required:
        return None
    try:
        micros = parse_credits(text)
    except ValueError:
        raise FormError(
            f"{field}: give a number of credits such as 100 or 0.25 (at most 6 decimals)"
        ) from None
    if micros <= 0:
        raise FormError(f"{field}: the amount must be more than 0")
    if micros > limits.AMOUNT_MICROS_MAX:
        raise FormError(f"{field}: at most {format_credits(limits.AMOUNT_MICROS_MAX)} credits")
    return micros


def moment(text: str, field: str) -> dt.datetime | None:
    """A ``datetime-local`` value, read as UTC; empty for none."""
    text = text.strip()
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FormError(f"{field}: give a date and time such as 2030-01-31T12:00") from None
    if value.tzinfo is not None:
        raise FormError(f"{field}: give the time in UTC without an offset")
    return value.replace(tzinfo=dt.UTC)


def note(text: str) -> dict[str, str]:
    text = text.strip()
    if len(text) > limits.CONSOLE_NOTE_LENGTH_MAX:
        raise FormError(f"note: at most {limits.CONSOLE_NOTE_LENGTH_MAX} characters")
    return {NOTE_KEY: text} if text else {}


@dataclasses.dataclass(frozen=True)
class Grant:
    source: str
    amount_micros: int
    expires_at: dt.datetime | None
    note: dict[str, str]

    @classmethod
    def read(cls, form: Mapping[str, str]) -> Grant:
        source = form.get("source", "")
        source_value(source)
        amount = credits(form.get("amount", ""), "amount")
        assert amount is not None
        return cls(
            source,
            amount,
            moment(form.get("expires_at", ""), "expires at"),
            note(form.get("note", "")),
        )


@dataclasses.dataclass(frozen=True)
class Reversal:
    transaction_id: str
    amount_micros: int | None
    note: dict[str, str]

    @classmethod
    def read(cls, form: Mapping[str, str]) -> Reversal:
        transaction_id = form.get("transaction_id", "").strip()
        if not transaction_id.isascii() or not transaction_id.isdigit():
            raise FormError("transaction: give the id of a debit (digits, from the history)")
        return cls(
            transaction_id,
            credits(form.get("amount", ""), "amount", required=False),
            note(form.get("note", "")),
        )


@dataclasses.dataclass(frozen=True)
class Price:
    agent_id: str
    price_micros: int
    unit: str
    active: bool

    @classmethod
    def read(cls, form: Mapping[str, str]) -> Price:
        agent_id = form.get("agent_id", "").strip()
        if not agent_id:
            raise FormError("agent: give the agent's id")
        price = credits(form.get("price", ""), "price")
        assert price is not None
        return cls(agent_id, price, form.get("unit", "").strip(), form.get("active") == "on")
