"""Where a price's credits come from: Stripe's price/product metadata, and the local catalog.

The Stripe dashboard is the source (``credits`` metadata on the price or its product, as the
seed configures it); the local catalog (price id -> kind, credits) is the fallback when the
API cannot answer and the cross-check when both can. A disagreement is never guessed: it is
logged and the event refused (5xx), so Stripe retries once an operator has fixed one side.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from creditwallet.core import limits

log = logging.getLogger(__name__)

KINDS = ("top_up", "subscription")
_CREDITS = re.compile(r"\d{1,10}(\.\d{1,6})?")


class PriceError(Exception):
    """The credits of a price are unknown or disputed; the event must be retried later."""


@dataclasses.dataclass(frozen=True)
class PriceCredits:
    kind: str
    credits_micros: int


def credits_micros(value: object) -> int:
    """'250' or '2.5' credits -> micros, exactly (no floats)."""
    text = str(value).strip()
    if not _CREDITS.fullmatch(text):
        raise PriceError(f"credits metadata {text!r} is not a number of credits")
    return int(decimal.Decimal(text) * limits.MICROS_PER_CREDIT)


def load(path: Path) -> dict[str, PriceCredits]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, PriceCredits] = {}
    for price_id, entry in raw["prices"].items():
        if entry["kind"] not in KINDS:
            raise ValueError(f"catalog {path}: {price_id} has unknown kind {entry['kind']!r}")
        out[price_id] = PriceCredits(entry["kind"], credits_micros(entry["credits"]))
    return out


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
    price_id: str, from_api: PriceCredits | None, catalog: Mapping[str, PriceCredits]
) -> PriceCredits:
    """The API's answer, checked against the catalog; the catalog alone when the API is silent."""
    local = catalog.get(price_id)
    if from_api is not None and local is not None and from_api != local:
        log.error(
            "price credits disagree between Stripe and the catalog",
            extra={"price_id": price_id, "stripe": str(from_api), "catalog": str(local)},
        )
        raise PriceError(f"Stripe and the catalog disagree on {price_id}")
    chosen = from_api or local
    if chosen is None:
        log.error("price has no credits in Stripe nor in the catalog", extra={"price_id": price_id})
        raise PriceError(
            f"price {price_id!r} has no credits metadata in Stripe and is not in the catalog "
            "(CATALOG_PATH)"
        )
    return chosen
