"""A hostile client, as a process of its own: ``python -m tests.faults.attacker KIND TARGET N S``.

Why a process: the attack must not share the measuring client's event loop (that would
measure the test, not the server). It opens its calls, prints ``ready`` once the first wave
is in place, keeps the pressure up (re-opening whatever the server ends, at most once a
``REOPEN_SECONDS`` per call: holding calls open is the attack, not a request flood, which no
server outruns on two cores without a rate limit in front) for S seconds, and exits by
itself. Loopback only; every loop is bounded by the deadline.

Kinds (each an attack the server once fell to):
- ``watch``: N open ``grpc.health.v1.Health/Watch`` streams, no token.
- ``bodiless``: N Debit calls that send headers and never a body, no token.
- ``bodiless-authed``: the same with a valid agent token.
- ``big``: 3.8 MB DebitRequests (a 330,000-entry map), no token, from 2 tasks, 8 a second.
- ``oversize-authed``: 4 MiB bodies with a valid token, N at once, again and again.
- ``headers``: N bodiless calls with 1 MB header blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from creditwallet.v1 import wallet_service_pb2 as wpb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import TOKENS

DEBIT = "/creditwallet.v1.WalletService/Debit"
CALLS_PER_CHANNEL = 200  # under the server's per-connection stream cap
AGENT = (("authorization", f"Bearer {TOKENS['agent']}"),)
CALL_TIMEOUT_SECONDS = 30.0
REOPEN_SECONDS = 1.0


def channels(target: str, calls: int) -> list[grpc.aio.Channel]:
    count = max(1, -(-calls // CALLS_PER_CHANNEL))
    # A channel argument of its own per channel: one connection each, not a shared subchannel.
    return [
        grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.primary_user_agent", f"attacker-{i}"),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        for i in range(count)
    ]


async def nothing(deadline: float) -> AsyncIterator[bytes]:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    return
    yield b""  # pragma: no cover


async def hold(make: Any, deadline: float, ready: list[int]) -> None:
    """Keep one call open until the deadline: re-open it whenever the server ends it."""
    first = True
    while time.monotonic() < deadline:
        call = make()
        if first:
            ready.append(1)
            first = False
        try:
            await asyncio.wait_for(_drain(call), max(0.01, deadline - time.monotonic()))
        except (grpc.aio.AioRpcError, TimeoutError):
            pass
        finally:
            call.cancel()
        await asyncio.sleep(REOPEN_SECONDS)


async def _drain(call: Any) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def attack(kind: str, target: str, count: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    opened = channels(target, count)
    ready: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    def each(i: int) -> Any:
        channel = opened[i % len(opened)]
        if kind == "watch":
            stub = health_pb2_grpc.HealthStub(channel)
            return lambda: stub.Watch(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS)
        if kind in ("bodiless", "bodiless-authed", "headers"):
            rpc = channel.stream_unary(DEBIT, request_serializer=None, response_deserializer=None)
            metadata: tuple[tuple[str, str], ...] = AGENT if kind == "bodiless-authed" else ()
            if kind == "headers":
                metadata = (("x-pad", "p" * (1024 * 1024)),)
            return lambda: rpc(nothing(deadline), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
        if kind == "oversize-authed":
            unary = channel.unary_unary(DEBIT, request_serializer=None, response_deserializer=None)
            body = b"\x0a" + b"\x80\x80\x80\x02" + b"a" * (4 * 1024 * 1024 - 16)
            return lambda: unary(body, timeout=CALL_TIMEOUT_SECONDS, metadata=AGENT)
        raise SystemExit(f"unknown kind {kind}")

    if kind == "big":
        return await _big(opened[0], deadline, ready)
    tasks = [asyncio.create_task(hold(each(i), deadline, ready)) for i in range(count)]
    while len(ready) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    for channel in opened:
        await channel.close(grace=None)
    return 0


async def _big(channel: grpc.aio.Channel, deadline: float, ready: list[int]) -> int:
    request = wpb.DebitRequest(user_id="victim", request_id="big", amount_micros=1)
    request.metadata.update({f"k{i}": "v" for i in range(330_000)})
    body = request.SerializeToString()
    rpc = channel.unary_unary(DEBIT, request_serializer=None, response_deserializer=None)
    print("ready", flush=True)

    async def sender() -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await rpc(body, timeout=CALL_TIMEOUT_SECONDS)
            await asyncio.sleep(0.25)  # 4 a second per task, 8 from two

    await asyncio.gather(sender(), sender())
    await channel.close(grace=None)
    return 0


def main() -> int:
    kind, target, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if not target.startswith("127.0.0.1:"):
        raise SystemExit("loopback targets only")
    return asyncio.run(attack(kind, target, count, seconds))


if __name__ == "__main__":
    sys.exit(main())
