"""Assembling the gRPC server: services, interceptor, health, reflection, limits, TLS.

The server never changes the schema: it connects as the runtime role, checks that every
migration is applied (``creditwallet-migrate up`` applies them, as the owner role) and refuses
to start otherwise, or when its role could change the schema or rewrite history
(``db.check_runtime_role``). The channel arguments below bound what any caller can make it
hold (docs/security.md says why each value).

Also the operator's side: a health probe that turns the gRPC health status NOT_SERVING while
the database is unreachable (server/health.py), and the Prometheus endpoint on
METRICS_ADDRESS when it is set (server/metrics.py).
"""

from __future__ import annotations

import dataclasses
import logging

import grpc
from creditwallet.core import limits
from creditwallet.server import db, metrics, migrate
from creditwallet.server.clock import Clock, SystemClock
from creditwallet.server.config import ServerConfig
from creditwallet.server.events.workers import EventWorkers
from creditwallet.server.health import DatabaseHealth
from creditwallet.server.interceptor import Gate, quiet_callers_gone
from creditwallet.server.ledger.batching import DebitBatcher
from creditwallet.server.services import Runtime
from creditwallet.server.services.admin import AdminService
from creditwallet.server.services.billing import BillingService
from creditwallet.server.services.wallet import WalletService
from creditwallet.v1 import admin_service_pb2, billing_service_pb2, wallet_service_pb2
from creditwallet.v1 import admin_service_pb2_grpc as agrpc
from creditwallet.v1 import billing_service_pb2_grpc as bgrpc
from creditwallet.v1 import wallet_service_pb2_grpc as wgrpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)


def _options(worker: Worker | None) -> tuple[tuple[str, int], ...]:
    """A worker shares its port with the others (SO_REUSEPORT); a lone server never does."""
    if worker is None:
        return SERVER_OPTIONS
    return (*(o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"), ("grpc.so_reuseport", 1))


@dataclasses.dataclass(frozen=True)
class Worker:
    """One of several server processes on one port: its index and its share of connections."""

    index: int
    pool_size: int


SERVICE_NAMES = (
    wallet_service_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


# What one caller can make the server hold (values and reasons: core/limits.py).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", limits.BATCH_DEBIT_BYTES_MAX),
    ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_metadata_size", limits.GRPC_METADATA_BYTES_MAX),
    ("grpc.absolute_max_metadata_size", limits.GRPC_METADATA_BYTES_ABSOLUTE_MAX),
    ("grpc.max_concurrent_streams", limits.GRPC_STREAMS_PER_CONNECTION_MAX),
    ("grpc.keepalive_time_ms", _ms(limits.GRPC_KEEPALIVE_TIME_SECONDS)),
    ("grpc.keepalive_timeout_ms", _ms(limits.GRPC_KEEPALIVE_TIMEOUT_SECONDS)),
    ("grpc.keepalive_permit_without_calls", 0),
    (
        "grpc.http2.min_ping_interval_without_data_ms",
        _ms(limits.GRPC_CLIENT_PING_INTERVAL_MIN_SECONDS),
    ),
    ("grpc.http2.max_ping_strikes", limits.GRPC_PING_STRIKES_MAX),
    ("grpc.max_connection_idle_ms", _ms(limits.GRPC_CONNECTION_IDLE_MAX_SECONDS)),
    ("grpc.max_connection_age_ms", _ms(limits.GRPC_CONNECTION_AGE_MAX_SECONDS)),
    ("grpc.max_connection_age_grace_ms", _ms(limits.GRPC_CONNECTION_AGE_GRACE_SECONDS)),
    ("grpc.so_reuseport", 0),
)


@dataclasses.dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    runtime: Runtime
    health: health_aio.HealthServicer
    probe: DatabaseHealth
    metrics_endpoint: metrics.MetricsEndpoint | None = None
    events: EventWorkers | None = None

    async def stop(self, grace_seconds: float = limits.GRPC_SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop accepting, finish in-flight calls, finish detached work, close the pool."""
        await self.probe.stop()
        await self.health.enter_graceful_shutdown()
        if self.events is not None:
            await self.events.stop()
        await self.server.stop(grace_seconds)
        await self.runtime.debits.drain()
        await db.drain_detached()
        await self.runtime.pool.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()


async def start(
    config: ServerConfig,
    *,
    dsn: str,
    clock: Clock | None = None,
    address: str | None = None,
    worker: Worker | None = None,
) -> RunningServer:
    """The server on a current schema; a ``worker`` of several (server/workers.py) shares its
    port and the database's connections with the others."""
    pool = await db.create_pool(
        dsn,
        statement_cache_size=config.statement_cache_size,
        max_size=worker.pool_size if worker else limits.DB_POOL_SIZE_MAX,
    )
    try:
        async with pool.acquire() as conn:
            await migrate.require_current(db.unwrap(conn))
            await db.check_runtime_role(db.unwrap(conn))
    except BaseException:
        await pool.close()
        raise
    clock = clock or SystemClock()
    debits = (
        DebitBatcher(pool, clock) if config.debit_batching else DebitBatcher.one_by_one(pool, clock)
    )
    events = await EventWorkers.create(config.events, pool, dsn, clock, config.statement_cache_size)
    runtime = Runtime(pool, clock, debits, config.trial_credits_micros, events)
    quiet_callers_gone()
    server = grpc.aio.server(
        interceptors=[Gate(config.tokens)],
        options=_options(worker),
        maximum_concurrent_rpcs=limits.GRPC_CONCURRENT_RPCS_MAX,
    )
    wgrpc.add_WalletServiceServicer_to_server(WalletService(runtime), server)
    bgrpc.add_BillingServiceServicer_to_server(BillingService(runtime), server)
    agrpc.add_AdminServiceServicer_to_server(AdminService(runtime), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind = address or config.grpc_address
    credentials = _credentials(config)
    if credentials is None:
        port = server.add_insecure_port(bind)
    else:
        port = server.add_secure_port(bind, credentials)
    await server.start()
    # Migrations just ran, so the database answered: SERVING until the probe says otherwise.
    probe = DatabaseHealth(dsn, health_servicer, SERVICE_NAMES)
    await probe.set(True)
    probe.start()
    events.start()
    metrics.watch_pool(pool)
    endpoint = metrics.serve(config.metrics_address) if config.metrics_address else None
    return RunningServer(server, port, runtime, health_servicer, probe, endpoint, events)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert_path is None or config.tls_key_path is None:
        return None
    key = config.tls_key_path.read_bytes()
    chain = config.tls_cert_path.read_bytes()
    client_ca = config.tls_client_ca_path.read_bytes() if config.tls_client_ca_path else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
