"""Prometheus metrics of the gRPC server (served on METRICS_ADDRESS when set).

One registry of our own (not prometheus_client's global one), so the endpoint shows what
this service records and nothing a library registered behind our back. ``serve`` runs
prometheus_client's small threaded HTTP server: scrapes never touch the event loop that
handles RPCs, and the pool gauges are read at scrape time, so they are never stale.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from creditwallet.core import limits
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from creditwallet.server.db import Pool

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()

RPCS = Counter(
    "creditwallet_rpcs",
    "RPCs handled, by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "creditwallet_rpc_seconds",
    "RPC latency by method",
    ["method"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
)
# Who calls: by the label of the token presented ("-" for none or an unknown one), never the
# token itself; a token about to be revoked shows here whether anyone still uses it.
RPCS_BY_CALLER = Counter(
    "creditwallet_rpcs_by_caller",
    "RPCs handled, by the caller's token label and status code",
    ["caller", "code"],
    registry=REGISTRY,
)
INSUFFICIENT = Counter(
    "creditwallet_insufficient_credits",
    "Debits refused for insufficient credits",
    registry=REGISTRY,
)
DEBITED_MICROS = Counter("creditwallet_debited_micros", "Micro-credits debited", registry=REGISTRY)
DEBITS = Counter("creditwallet_debits", "Debits applied (replays not counted)", registry=REGISTRY)
ROLLOVERS = Counter(
    "creditwallet_rollover_runs", "Rollover runs by outcome", ["outcome"], registry=REGISTRY
)
DEBIT_BATCH_SIZE = Histogram(
    "creditwallet_debit_batch_size",
    "Debits committed together by group commit",
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32),
)
DEBIT_BATCHES_ABORTED = Counter(
    "creditwallet_debit_batches_aborted",
    "Debit batches rerun one by one after a failure",
    registry=REGISTRY,
)
POOL_SIZE = Gauge("creditwallet_db_pool_size", "Connections open in the pool", registry=REGISTRY)
POOL_IDLE = Gauge("creditwallet_db_pool_idle", "Idle connections in the pool", registry=REGISTRY)
POOL_MAX = Gauge(
    "creditwallet_db_pool_max", "Most connections the pool may open", registry=REGISTRY
)
DATABASE_UP = Gauge(
    "creditwallet_database_up", "1 when the health probe reached the database", registry=REGISTRY
)


def observe_rpc(method: str, code: str, seconds: float, *, caller: str = "-") -> None:
    RPCS.labels(method, code).inc()
    RPCS_BY_CALLER.labels(caller, code).inc()
    RPC_SECONDS.labels(method).observe(seconds)


def watch_pool(pool: Pool) -> None:
    """Read the pool's figures at each scrape instead of updating them on every acquire."""
    POOL_SIZE.set_function(pool.get_size)
    POOL_IDLE.set_function(pool.get_idle_size)
    POOL_MAX.set_function(pool.get_max_size)


class MetricsEndpoint:
    """The Prometheus HTTP endpoint, on its own daemon thread; ``stop`` frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=limits.METRICS_STOP_SECONDS)


def serve(address: str) -> MetricsEndpoint:
    """Serve REGISTRY on ``host:port`` (port 0 picks a free one, for tests)."""
    host, _, port = address.rpartition(":")
    server, thread = start_http_server(int(port), addr=host, registry=REGISTRY)
    endpoint = MetricsEndpoint(server, thread)
    log.info("metrics listening", extra={"address": f"{host}:{endpoint.port}"})
    return endpoint
