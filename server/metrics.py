"""Prometheus metrics of the gRPC server (served on METRICS_ADDRESS when set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
INSUFFICIENT = Counter(
    "creditwallet_insufficient_credits",
    "Debits refused for insufficient credits",
    registry=REGISTRY,
)
DEBITED_MICROS = Counter("creditwallet_debited_micros", "Micro-credits debited", registry=REGISTRY)
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


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPCS.labels(method, code).inc()
    RPC_SECONDS.labels(method).observe(seconds)
