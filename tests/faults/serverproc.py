"""``python -m creditwallet.server`` as a child process: started, probed, killed, restarted.

Why a real process: ``kill -9`` must take the whole server down at once — its event loop,
its pool, its shielded transactions — which no in-process fixture can imitate. The child
gets a fresh database from the harness, a free 127.0.0.1 port and the harness tokens; its
stdout and stderr go to a file the tests scan afterwards (for secrets, and to explain a
failure). Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import TOKENS

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
HEALTH_CALL_TIMEOUT_SECONDS = 1.0
POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(dsn: str, port: int, **extra: str) -> dict[str, str]:
    """Only what the server needs, so nothing of the test's environment leaks in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
        "DATABASE_URL": dsn,
        "GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AGENT_TOKEN": TOKENS["agent"],
        "BILLING_TOKEN": TOKENS["billing"],
        "ADMIN_TOKEN": TOKENS["admin"],
        "LOG_LEVEL": "DEBUG",
        # One process, so that a scenario's kill, metrics and log are those of the server;
        # several workers are tests/server/test_workers.py's (pass GRPC_WORKERS to override).
        "GRPC_WORKERS": "1",
    }
    env.update(extra)
    return env


class ServerProcess:
    """One server child; ``start`` may be called again after ``kill`` (same port, same log)."""

    def __init__(self, dsn: str, log_path: Path, port: int | None = None, **extra: str) -> None:
        self.dsn = dsn
        self.port = port or free_port()
        self.env = server_env(dsn, self.port, **extra)
        self.log_path = log_path
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        assert not self.alive(), "already running"
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "creditwallet.server"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1

    async def wait_serving(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Until the health check says SERVING; fails early if the child died."""
        async with asyncio.timeout(timeout_seconds):
            while True:
                if not self.alive():
                    raise RuntimeError(f"server exited; log tail:\n{self.log_tail()}")
                if await self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
                await asyncio.sleep(POLL_SECONDS)

    async def health(self) -> int | None:
        """The health status of the whole server, or None when it does not answer."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=HEALTH_CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError:
                return None
            return int(reply.status)

    def kill(self) -> None:
        """``kill -9``: no shutdown handler, no drain, no goodbye to PostgreSQL."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        self._close_log()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped in time."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        self._close_log()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
