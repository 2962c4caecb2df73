"""The event types, in one list: the triggers write them, filters and docs name them."""

from __future__ import annotations

from typing import Final

EVENT_TYPES: Final = (
    "credits.granted",
    "credits.debited",
    "credits.reversed",
    "credits.expired",
    "credits.clawed_back",
    "credits.expiry_changed",
    "credits.expiring",
    "hold.created",
    "hold.captured",
    "hold.voided",
    "hold.expired",
    "balance.low",
    "balance.depleted",
    "subscription.updated",
    "payment.failed",
    "auto_recharge.requested",
    "auto_recharge.succeeded",
    "auto_recharge.failed",
    "auto_recharge.disabled",
)
