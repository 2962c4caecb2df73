"""The bench's load generator: closed-loop callers spread over several client processes.

Why processes: one Python process with grpc.aio tops out near the server's own rate (both are
one event loop doing the same gRPC work), so a single client process would measure itself.
``LoadGenerator(processes=P)`` spawns P processes once; each ``run`` splits the callers over
them (a process with no caller sits the run out), starts them all at the same moment, and
merges what they measured: throughput is the calls completed by all of them in the common
window, latencies are every call's, merged. Each process talks through its own
``AsyncCreditWalletClient`` with a connection of its own (``own_connection``), so the load
reaches every worker of a ``GRPC_WORKERS`` server.

What a call is (``Call``): a health ``Check`` (the gRPC ceiling), a ``Debit`` (spread over the
bench accounts or on the hot account), or a ``BatchDebit`` of ``batch`` debits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import multiprocessing
import time
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import Any

from creditwallet.server.bench.workload import (
    DEBIT_MICROS,
    Figures,
    summarize,
    user_for,
)

START_DELAY_SECONDS = 0.5  # every process has its start signal well before the start time
RUN_TIMEOUT_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class Call:
    kind: str  # "health", "debit", "batch"
    spread: bool = True
    batch: int = 1
    tag: str = ""


@dataclasses.dataclass(frozen=True)
class _Run:
    target: str
    token: str
    call: Call
    callers: int
    seconds: float
    start_at: float  # time.time() of the common start
    first: int  # this process's first call number (request_ids never collide)


class LoadGenerator:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        context = multiprocessing.get_context("spawn")
        self._children: list[tuple[BaseProcess, Pipe]] = []
        for index in range(processes):
            ours, theirs = context.Pipe()
            child = context.Process(target=_child_main, args=(theirs,), name=f"loadgen-{index}")
            child.start()
            theirs.close()
            self._children.append((child, ours))

    @property
    def pids(self) -> list[int]:
        return [child.pid for child, _ in self._children if child.pid is not None]

    def run(
        self, target: str, token: str, call: Call, callers: int, seconds: float, *, using: int = 0
    ) -> Figures:
        """``callers`` closed loops for ``seconds``, over ``using`` processes (all by default)."""
        active = self._children[: min(callers, using or self.processes)]
        start_at = time.time() + START_DELAY_SECONDS + 0.05 * len(active)
        shares = [callers // len(active) + (i < callers % len(active)) for i in range(len(active))]
        for index, ((_, pipe), share) in enumerate(zip(active, shares, strict=True)):
            pipe.send(_Run(target, token, call, share, seconds, start_at, index * 10**9))
        latencies: list[float] = []
        ends: list[float] = []
        for child, pipe in active:
            if not pipe.poll(seconds + RUN_TIMEOUT_SECONDS):
                raise RuntimeError(f"{child.name} did not answer")
            answer = pipe.recv()
            if isinstance(answer, str):
                raise RuntimeError(f"{child.name}: {answer}")
            got, ended = answer
            latencies.extend(got)
            ends.append(ended)
        return summarize(latencies, max(ends) - start_at)

    def close(self) -> None:
        for child, pipe in self._children:
            pipe.send(None)
            child.join(10)
            if child.exitcode is None:
                child.kill()
                child.join(10)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child_main(pipe: Pipe) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_child(pipe))


async def _child(pipe: Pipe) -> None:
    from creditwallet.client.wallet import AsyncCreditWalletClient

    clients: dict[tuple[str, str], AsyncCreditWalletClient] = {}
    loop = asyncio.get_running_loop()
    while True:
        job = await loop.run_in_executor(None, pipe.recv)
        if job is None:
            break
        try:
            key = (job.target, job.token)
            if key not in clients:
                clients[key] = AsyncCreditWalletClient(
                    job.target, job.token, retries=0, timeout_seconds=60.0, own_connection=True
                )
            pipe.send(await _closed_loop(clients[key], job))
        except Exception as error:  # reported to the parent, which stops the bench
            pipe.send(f"{type(error).__name__}: {error}")
    for client in clients.values():
        await client.close()


async def _closed_loop(client: Any, job: _Run) -> tuple[list[float], float]:
    one = _caller(client, job.call)
    await one(job.first + 10**8)  # warm: the connection is up before the clock starts
    await asyncio.sleep(max(0.0, job.start_at - time.time()))
    counter = itertools.count(job.first)
    latencies: list[float] = []
    deadline = time.perf_counter() + job.seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            started = time.perf_counter()
            await one(n)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(loop() for _ in range(job.callers)))
    return latencies, time.time()


def _caller(client: Any, call: Call) -> Any:
    from creditwallet.client.rpc_table import Rpc
    from creditwallet.v1 import wallet_service_pb2 as wpb
    from grpc_health.v1 import health_pb2

    if call.kind == "health":
        check = Rpc(
            "grpc.health.v1.Health",
            "Check",
            health_pb2.HealthCheckRequest,
            health_pb2.HealthCheckResponse,
        )
        request = health_pb2.HealthCheckRequest()

        async def health(n: int) -> object:
            return await client.call(check, request)

        return health

    def debit(n: int) -> wpb.DebitRequest:
        return wpb.DebitRequest(
            user_id=user_for(call.spread, n),
            request_id=f"{call.tag}-{n}",
            amount_micros=DEBIT_MICROS,
        )

    if call.kind == "debit":

        async def one(n: int) -> object:
            return await client.wallet.Debit(debit(n))

        return one

    async def batch(n: int) -> object:
        items = [debit(n * call.batch + i) for i in range(call.batch)]
        reply = await client.wallet.BatchDebit(wpb.BatchDebitRequest(requests=items))
        refused = [r.error.reason for r in reply.results if r.WhichOneof("outcome") == "error"]
        if refused:
            raise RuntimeError(f"batch debits refused: {refused[:3]}")
        return reply

    return batch
