"""A real PgBouncer (Debian's ``pgbouncer``) in transaction mode in front of a test cluster.

Why real: what breaks behind transaction pooling (named prepared statements, session state,
session advisory locks) breaks only against the real pooler. ``make faults`` installs the
package when it is missing; this module only runs it: its own config, port and log in a
temporary directory, stopped with SIGTERM (SIGKILL after a bound).

PgBouncer refuses to run as root, so as root it runs as the owner of PostgreSQL's socket
directory (the user that can reach the cluster anyway).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
# Fewer server connections than the replicas' pools hold together, so that transactions of
# both replicas really are multiplexed over shared server connections.
SERVER_POOL_SIZE = 8


def binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bouncer:
    def __init__(self, base_dsn: str, users: tuple[str, ...] = ("postgres",)) -> None:
        path = binary()
        assert path is not None, "pgbouncer is not installed (make faults installs it)"
        parts = urllib.parse.urlsplit(base_dsn)
        query = urllib.parse.parse_qs(parts.query)
        socket_dir = (query.get("host") or [parts.hostname or "127.0.0.1"])[0]
        pg_port = int((query.get("port") or [str(parts.port or 5432)])[0])
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cw-bouncer-", dir="/tmp"))
        self.log_path = self.root / "pgbouncer.log"
        (self.root / "users.txt").write_text("".join(f'"{user}" ""\n' for user in users))
        (self.root / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={socket_dir} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.root / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_POOL_SIZE}
max_client_conn = 1000
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.log_path}
pidfile = {self.root / "pgbouncer.pid"}
"""
        )
        argv = [path, str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            owner = pwd.getpwuid(Path(socket_dir).stat().st_uid).pw_name
            shutil.chown(self.root, user=owner)
            for child in self.root.iterdir():
                shutil.chown(child, user=owner)
            argv[1:1] = ["-u", owner]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_listening()

    def dsn(self, database: str, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT_SECONDS)
        shutil.rmtree(self.root, ignore_errors=True)
