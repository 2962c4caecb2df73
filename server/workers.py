"""``GRPC_WORKERS=N``: N server processes on one port, each with its own event loop and pool.

Why processes: one Python event loop serves gRPC and the ledger's Python on one core, and that
core is the first limit (docs/performance.md). N processes on one port (``SO_REUSEPORT``, as in
grpc's multiprocessing example) let the kernel spread connections over N loops. A client
connection stays with the process that accepted it, so a client with several channels (or
many clients) uses every worker; one channel uses one.

The supervisor (this process) does what must happen once: it waits for the database, checks
that its schema is current and that the role may not change it (as a lone server does: the
server never migrates), and holds the port reserved (an ``SO_REUSEPORT`` socket that never
listens) so that every worker binds the same one, also when ``GRPC_ADDRESS`` names port 0.
Then it starts the workers (spawned, not forked: a fork of a process that touched gRPC is
unsafe), waits for each to say it is serving, and from then on only watches:

- SIGTERM or SIGINT: every worker is asked to stop (SIGTERM: stop accepting, finish the calls
  in flight, drain the debit batches, close the pool), and any still running after
  ``limits.GRPC_WORKERS_STOP_SECONDS`` is killed;
- a worker that exits on its own: the others are stopped and the server exits 1, so that the
  process manager restarts it whole (a half-sized server would hide the failure);
- the supervisor itself dies (``kill -9``): each worker gets SIGKILL from the kernel
  (``PR_SET_PDEATHSIG``), so nothing is left serving without it.

Metrics: each worker serves its own Prometheus endpoint, on METRICS_ADDRESS's port plus its
index (scrape them all and sum).

Connections: the workers share ``limits.DB_CONNECTIONS_PER_SERVER_MAX`` equally (each pool
at most ``DB_POOL_SIZE_MAX``, at least ``DB_POOL_SIZE_WORKER_MIN``), so adding workers does
not multiply what PostgreSQL has to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess

from creditwallet.core import limits, logs, startup
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import StartupError
from creditwallet.server.config import ServerConfig

log = logging.getLogger("creditwallet.server")

_PR_SET_PDEATHSIG = 1
_READY = "ready"


def pool_size(workers: int) -> int:
    """Each worker's pool: an equal share of the server's connections, within bounds."""
    share = limits.DB_CONNECTIONS_PER_SERVER_MAX // workers
    return max(limits.DB_POOL_SIZE_WORKER_MIN, min(limits.DB_POOL_SIZE_MAX, share))


@contextlib.contextmanager
def reserved_port(address: str) -> Iterator[int]:
    """Bind (never listen on) ``address`` with SO_REUSEPORT; yield its port while held."""
    host, port = startup.split_host_port("GRPC_ADDRESS", address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise StartupError(startup.listen_failure("GRPC_ADDRESS", address, error)) from None
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclasses.dataclass(frozen=True)
class _Start:
    """What a worker needs (pickled to the spawned child)."""

    config: ServerConfig
    dsn: str
    address: str
    index: int
    pool_size: int
    parent_pid: int


async def supervise(config: ServerConfig, dsn: str) -> int:
    """Check the database once, start ``config.grpc_workers`` workers on one port, watch them."""
    import asyncpg
    from creditwallet.server import db, migrate

    conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_SECONDS)
    try:  # refused here in one line, before any worker starts
        await migrate.require_current(conn)
        await db.check_runtime_role(conn)
    finally:
        await conn.close()
    count = config.grpc_workers
    with reserved_port(config.grpc_address) as port:
        host = config.grpc_address.rpartition(":")[0]
        address = f"{host}:{port}"
        context = multiprocessing.get_context("spawn")
        children: list[tuple[BaseProcess, Pipe]] = []
        try:
            for index in range(count):
                ours, theirs = context.Pipe(duplex=False)
                start = _Start(config, dsn, address, index, pool_size(count), os.getpid())
                child = context.Process(
                    target=_worker_main, args=(start, theirs), name=f"worker-{index}"
                )
                child.start()
                theirs.close()
                children.append((child, ours))
            await _wait_ready(children)
            log.info(
                "gRPC server listening",
                extra={
                    "address": config.grpc_address,
                    "port": port,
                    "workers": count,
                    "pool_size": pool_size(count),
                },
            )
            return await _watch([c for c, _ in children])
        finally:
            _stop_all([c for c, _ in children])


async def _wait_ready(children: list[tuple[BaseProcess, Pipe]]) -> None:
    deadline = time.monotonic() + limits.DB_WAIT_SECONDS_MAX + limits.GRPC_WORKERS_STOP_SECONDS
    waiting = dict(children)
    while waiting:
        for child, pipe in list(waiting.items()):
            if pipe.poll():
                message = pipe.recv()
                if message != _READY:
                    raise StartupError(f"worker {child.name}: {message}")
                del waiting[child]
            elif child.exitcode is not None:
                raise StartupError(f"worker {child.name} exited ({child.exitcode}) at start-up")
        if time.monotonic() > deadline:
            raise StartupError("the workers did not start in time")
        await asyncio.sleep(limits.SUPERVISOR_POLL_SECONDS / 4)


async def _watch(children: list[BaseProcess]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        dead = [c for c in children if c.exitcode is not None]
        if dead:
            log.error(
                "a worker exited; stopping the others",
                extra={"worker": dead[0].name, "exit_code": dead[0].exitcode},
            )
            return startup.EXIT_CANNOT_START
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), limits.SUPERVISOR_POLL_SECONDS)
    log.info("shutting down", extra={"workers": len(children)})
    return 0


def _stop_all(children: list[BaseProcess]) -> None:
    """SIGTERM to every live worker, then SIGKILL to any still there after the grace."""
    for child in children:
        if child.exitcode is None and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + limits.GRPC_WORKERS_STOP_SECONDS
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.exitcode is None:
            log.warning("worker did not stop in time; killed", extra={"worker": child.name})
            child.kill()
            child.join(limits.GRPC_WORKERS_STOP_SECONDS)


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(startup.EXIT_CANNOT_START)


def _worker_main(start: _Start, pipe: Pipe) -> None:
    _die_with_parent(start.parent_pid)
    config = start.config
    logs.configure(LogSettings("json" if config.log_json else "text", config.log_level))
    import uvloop

    uvloop.install()
    try:
        code = asyncio.run(_serve(start, pipe))
    except Exception as error:  # told to the supervisor, which prints it in one line
        with contextlib.suppress(OSError):
            pipe.send(startup.one_line(error))
        code = startup.EXIT_CANNOT_START
    os._exit(code)


async def _serve(start: _Start, pipe: Pipe) -> int:
    from creditwallet.server import app

    worker = app.Worker(start.index, start.pool_size)
    config = start.config
    if config.metrics_address:  # one endpoint per worker: the port, plus the worker's index
        host, port = startup.split_host_port("METRICS_ADDRESS", config.metrics_address)
        config = dataclasses.replace(config, metrics_address=f"{host}:{port + start.index}")
    running = await app.start(config, dsn=start.dsn, address=start.address, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker serving",
        extra={"worker": start.index, "pid": os.getpid(), "pool_size": start.pool_size},
    )
    pipe.send(_READY)
    pipe.close()
    await stop.wait()
    await running.stop()
    return 0
