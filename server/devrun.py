"""``make run``: everything up on the embedded database, in the foreground.

Starts PostgreSQL (unless DATABASE_URL is set), applies the migrations as the schema's owner
(``MIGRATIONS_DATABASE_URL``), then the gRPC server (as the runtime role) and the webhook
gateway as two processes, as in production, with development tokens and secrets generated
for whatever the environment does not set, and printed once so a developer can use them.
Ctrl-C (or SIGTERM) stops both processes, then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from creditwallet.core import limits
from creditwallet.server import db

GENERATED = ("AGENT_TOKEN", "BILLING_TOKEN", "ADMIN_TOKEN", "STRIPE_WEBHOOK_SECRET", "CRON_SECRET")


def main() -> int:
    env = dict(os.environ)
    made = {}
    for name in GENERATED:
        if not env.get(name):
            prefix = "whsec_" if name == "STRIPE_WEBHOOK_SECRET" else ""
            env[name] = made[name] = prefix + secrets.token_urlsafe(32)
    env.setdefault("GRPC_ADDRESS", "127.0.0.1:50051")
    env.setdefault("GATEWAY_ADDRESS", "127.0.0.1:8080")
    env.setdefault("LEDGER_TARGET", env["GRPC_ADDRESS"])
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("METRICS_ADDRESS", "127.0.0.1:9464")
    if not env.get("STRIPE_SECRET_KEY"):
        env.setdefault("STRIPE_MODE", "test")
    if not env.get("DATABASE_URL"):
        # The embedded cluster with its two roles: migrations as the owner, the server as
        # the runtime role (as in production).
        owner, runtime = asyncio.run(db.embedded_dsns(Path(env.get("DATA_DIR", ".data"))))
        env["DATABASE_URL"] = runtime
        env.setdefault("MIGRATIONS_DATABASE_URL", owner)
        print(f"PostgreSQL (embedded) data in {env.get('DATA_DIR', '.data')}/pg")
    migrated = subprocess.run(
        [sys.executable, "-m", "creditwallet.server.migrate", "up"],
        env=env,
        check=False,
        timeout=limits.DEVRUN_MIGRATE_TIMEOUT_SECONDS,
    )
    if migrated.returncode != 0:
        print("migrations failed; not starting the server")
        return 1
    server_env = {k: v for k, v in env.items() if k != "MIGRATIONS_DATABASE_URL"}
    procs = [subprocess.Popen([sys.executable, "-m", "creditwallet.server"], env=server_env)]
    if importlib.util.find_spec("creditwallet.gateway.__main__") is not None:
        procs.append(subprocess.Popen([sys.executable, "-m", "creditwallet.gateway"], env=env))
    print(f"gRPC server   {env['GRPC_ADDRESS']}")
    print(f"metrics       http://{env['METRICS_ADDRESS']}/metrics")
    print(f"gateway       http://{env['GATEWAY_ADDRESS']}  (POST /stripe/webhook, POST /rollover)")
    for name, value in made.items():
        print(f"{name}={value}   (generated for this run)")
    print("Ctrl-C stops everything.")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + limits.DEVRUN_STOP_GRACE_SECONDS
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
    print("stopped.")
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
