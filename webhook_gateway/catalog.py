"""What a price grants and costs: the local catalog, cross-checked with Stripe's metadata.

The catalog (price id -> kind, credits, unit amount, currency) is the allow-list: a price
that is not in it grants nothing, whatever an event, its metadata or an inline price claims.
Stripe's ``credits`` metadata (on the price or its product, as the seed configures it) is the
cross-check when the API can answer: a disagreement is never guessed, it is logged and the
event refused (5xx), so Stripe retries once an operator has fixed one side.

``check_paid`` holds a checkout against what the catalog says it costs: its currency and its
pre-discount amount (``amount_subtotal``) must be the catalog's price x quantity, and its
``livemode`` the gateway's; discounts and taxes do not matter (they change the total, not the
subtotal). A mismatch is ``PaymentMismatch``: nothing is granted.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from creditwallet.core import limits

log = logging.getLogger(__name__)

KINDS = ("top_up", "subscription")
_CREDITS = re.compile(r"\d{1,10}(\.\d{1,6})?")


class PriceError(Exception):
    """The credits of a price are unknown or disputed; the event must be retried later."""


class PaymentMismatch(Exception):
    """What was paid is not what the catalog charges for what would be granted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class PriceCredits:
    kind: str
    credits_micros: int


@dataclasses.dataclass(frozen=True)
class CatalogPrice:
    """One allowed price: what it grants per unit, and what one unit costs (minor units)."""

    kind: str
    credits_micros: int
    unit_amount: int
    currency: str
    # The burn-down priority of the top-up lot it grants (0-100, lower burns first); None
    # for the default of every lot.
    priority: int | None = None

    @property
    def credits(self) -> PriceCredits:
        return PriceCredits(self.kind, self.credits_micros)


@dataclasses.dataclass(frozen=True)
class Paid:
    """A checkout's money, as the event states it."""

    currency: str
    amount_subtotal: int
    livemode: bool


def credits_micros(value: object) -> int:
    """'250' or '2.5' credits -> micros, exactly (no floats)."""
    text = str(value).strip()
    if not _CREDITS.fullmatch(text):
        raise PriceError(f"credits metadata {text!r} is not a number of credits")
    return int(decimal.Decimal(text) * limits.MICROS_PER_CREDIT)


def load(path: Path) -> dict[str, CatalogPrice]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, CatalogPrice] = {}
    for price_id, entry in raw["prices"].items():
        if entry["kind"] not in KINDS:
            raise ValueError(f"catalog {path}: {price_id} has unknown kind {entry['kind']!r}")
        amount, currency = entry.get("unit_amount"), entry.get("currency")
        if type(amount) is not int or amount <= 0 or not isinstance(currency, str):
            raise ValueError(
                f"catalog {path}: {price_id} needs a positive unit_amount and a currency"
            )
        out[price_id] = CatalogPrice(
            entry["kind"],
            credits_micros(entry["credits"]),
            amount,
            currency.lower(),
            _priority(path, price_id, entry),
        )
    return out


def _priority(path: Path, price_id: str, entry: Mapping[str, Any]) -> int | None:
    """An optional priority, for top-ups only (a subscription's lots keep the default)."""
    if "priority" not in entry:
        return None
    value = entry["priority"]
    if entry["kind"] != "top_up":
        raise ValueError(f"catalog {path}: {price_id}: priority applies to top_up prices only")
    if type(value) is not int or not limits.LOT_PRIORITY_MIN <= value <= limits.LOT_PRIORITY_MAX:
        raise ValueError(
            f"catalog {path}: {price_id}: priority must be an integer between "
            f"{limits.LOT_PRIORITY_MIN} and {limits.LOT_PRIORITY_MAX}"
        )
    return value


def lot_priority(items: Sequence[tuple[CatalogPrice, int]]) -> int | None:
    """One checkout grants one lot: it burns as early as its most urgent price asks."""
    given = [price.priority for price, _ in items if price.priority is not None]
    return min(given) if given else None


def check_paid(paid: Paid, items: Sequence[tuple[CatalogPrice, int]], *, livemode: bool) -> None:
    """Raise ``PaymentMismatch`` unless ``paid`` is exactly the catalog's price of ``items``."""
    if paid.livemode is not livemode:
        raise PaymentMismatch(
            "livemode",
            f"a {'live' if paid.livemode else 'test'}-mode payment, and this gateway"
            f" is in {'live' if livemode else 'test'} mode",
        )
    currencies = {price.currency for price, _ in items}
    if currencies != {paid.currency.lower()}:
        raise PaymentMismatch(
            "currency", f"paid in {paid.currency!r}, the catalog charges {sorted(currencies)}"
        )
    expected = sum(price.unit_amount * quantity for price, quantity in items)
    if paid.amount_subtotal != expected:
        raise PaymentMismatch(
            "amount", f"amount_subtotal {paid.amount_subtotal}, the catalog charges {expected}"
        )


def from_price_object(price: Mapping[str, Any]) -> PriceCredits | None:
    """Credits from a Stripe price (its metadata, else its expanded product's)."""
    product = price.get("product")
    for metadata in (
        price.get("metadata"),
        product.get("metadata") if isinstance(product, dict) else None,
    ):
        if isinstance(metadata, dict) and metadata.get("credits") not in (None, ""):
            kind = "subscription" if price.get("recurring") else "top_up"
            return PriceCredits(kind, credits_micros(metadata["credits"]))
    return None


def decide(
    price_id: str, from_api: PriceCredits | None, catalog: Mapping[str, CatalogPrice]
) -> CatalogPrice:
    """The catalog's entry, which must exist, checked against the API's answer if any."""
    local = catalog.get(price_id)
    if local is None:
        log.error("price is not in the catalog", extra={"price_id": price_id})
        raise PriceError(f"price {price_id!r} is not in the catalog (CATALOG_PATH)")
    if from_api is not None and from_api != local.credits:
        log.error(
            "price credits disagree between Stripe and the catalog",
            extra={"price_id": price_id, "stripe": str(from_api), "catalog": str(local)},
        )
        raise PriceError(f"Stripe and the catalog disagree on {price_id}")
    return local
