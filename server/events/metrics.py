"""The events' Prometheus metrics, in the server's own registry.

Written events are counted as the sequencer places them (by type), so a count is of
committed events only; deliveries by endpoint and type and outcome; the lag from the
ledger's time of a change to its acknowledged delivery, by endpoint.
"""

from __future__ import annotations

from creditwallet.server.metrics import REGISTRY
from prometheus_client import Counter, Gauge, Histogram

EVENTS_WRITTEN = Counter(
    "creditwallet_events_written",
    "Committed events given a stream position, by type",
    ["type"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "creditwallet_webhook_deliveries",
    "Webhook delivery attempts by endpoint, type and outcome (delivered, retried, failed)",
    ["endpoint", "type", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LAG_SECONDS = Histogram(
    "creditwallet_webhook_delivery_lag_seconds",
    "Seconds from an event's change to its acknowledged delivery, by endpoint",
    ["endpoint"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 86400.0),
)
STREAM_POSITION = Gauge(
    "creditwallet_events_stream_position",
    "The last position the sequencer assigned",
    registry=REGISTRY,
)
STREAMS_OPEN = Gauge(
    "creditwallet_event_streams_open", "StreamEvents calls in progress", registry=REGISTRY
)
RECHARGE_ATTEMPTS = Counter(
    "creditwallet_auto_recharge_payments",
    "Auto-recharge PaymentIntent calls by outcome (submitted, retried, failed)",
    ["outcome"],
    registry=REGISTRY,
)
