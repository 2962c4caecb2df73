"""``make run``: everything up on the embedded database, in the foreground.

Starts PostgreSQL (unless DATABASE_URL is set), applies the migrations as the schema's owner
(``MIGRATIONS_DATABASE_URL``), then the gRPC server (as the runtime role), the webhook
gateway and the operators' console (when its extra is installed) as processes of their own,
as in production, with development tokens and secrets generated
for whatever the environment does not set. What a second terminal needs (the addresses, the
tokens, the virtualenv on PATH) is written to ``DATA_DIR/dev.env`` (``.data/dev.env``) and
printed, so ``. .data/dev.env`` there makes ``creditwallet`` and ``grpcurl`` talk to this run.
Ctrl-C (or SIGTERM) stops the processes, then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from creditwallet.core import commands, limits, startup
from creditwallet.core.settings import StartupError

PROG = "make run"
GENERATED: Final = (
    "AGENT_TOKEN",
    "BILLING_TOKEN",
    "ADMIN_TOKEN",
    "STRIPE_WEBHOOK_SECRET",
    "CRON_SECRET",
)
DEFAULTS: Final = {
    "GRPC_ADDRESS": "127.0.0.1:50051",
    "GATEWAY_ADDRESS": "127.0.0.1:8080",
    "METRICS_ADDRESS": "127.0.0.1:9464",
    "CONSOLE_ADDRESS": "127.0.0.1:8090",
    "LOG_FORMAT": "text",
}
# What dev.env exports: where things are and the secrets a client needs.
SHARED: Final = (
    "GRPC_ADDRESS",
    "LEDGER_TARGET",
    "GATEWAY_ADDRESS",
    "METRICS_ADDRESS",
    "CONSOLE_ADDRESS",
    *GENERATED,
)
DESCRIPTION = """Run the gRPC server, the gateway and the console on the embedded PostgreSQL
(make run).

Every variable of the server, the gateway and the console is honoured; these are generated
when unset: AGENT_TOKEN, BILLING_TOKEN, ADMIN_TOKEN, STRIPE_WEBHOOK_SECRET, CRON_SECRET. The
addresses default to GRPC_ADDRESS=127.0.0.1:50051, GATEWAY_ADDRESS=127.0.0.1:8080,
METRICS_ADDRESS=127.0.0.1:9464 and CONSOLE_ADDRESS=127.0.0.1:8090; DATA_DIR (default .data)
holds the database and dev.env."""


def main(argv: list[str] | None = None) -> int:
    commands.parser("creditwallet.server.devrun", DESCRIPTION).parse_args(argv)
    return startup.run_command(PROG, lambda: _run(dict(os.environ)))


def environment(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The processes' environment (``env`` plus defaults) and the names generated for it."""
    result = dict(env)
    made = []
    for name in GENERATED:
        if not result.get(name):
            prefix = "whsec_" if name == "STRIPE_WEBHOOK_SECRET" else ""
            result[name] = prefix + secrets.token_urlsafe(24)
            made.append(name)
    for name, value in DEFAULTS.items():
        result.setdefault(name, value)
    result.setdefault("LEDGER_TARGET", result["GRPC_ADDRESS"])
    if not result.get("STRIPE_SECRET_KEY"):
        result.setdefault("STRIPE_MODE", "test")
    return result, made


def dev_env_text(env: Mapping[str, str], bin_dir: Path) -> str:
    """The file a second terminal sources: ``export NAME=value`` lines, shell-quoted."""
    lines = [
        "# Written by `make run` for this run; `. .data/dev.env` in another terminal.",
        "# The project's virtualenv comes first on PATH, for creditwallet and grpcurl.",
        f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"',
    ]
    lines += [f"export {name}={shlex.quote(env[name])}" for name in SHARED if env.get(name)]
    return "\n".join(lines) + "\n"


def _run(os_env: Mapping[str, str]) -> int:
    env, made = environment(os_env)
    for variable in ("GRPC_ADDRESS", "GATEWAY_ADDRESS", "METRICS_ADDRESS", "CONSOLE_ADDRESS"):
        startup.check_can_listen(variable, env[variable])
    data_dir = Path(env.get("DATA_DIR") or ".data")
    if not env.get("DATABASE_URL"):
        from creditwallet.server import db
        from creditwallet.server.startup import start_embedded

        # Its two roles, as in production: migrations as the owner, the server as runtime.
        superuser = start_embedded(data_dir)
        owner, env["DATABASE_URL"] = asyncio.run(db.provision(superuser, db.EMBEDDED_DATABASE))
        env.setdefault("MIGRATIONS_DATABASE_URL", owner)
        print(f"PostgreSQL (embedded) data in {data_dir}/pg")
    migrated = subprocess.run(
        [sys.executable, "-m", "creditwallet.server.migrate", "up"],
        env=env,
        check=False,
        timeout=limits.DEVRUN_MIGRATE_TIMEOUT_SECONDS,
    )
    if migrated.returncode != 0:
        raise StartupError("the migrations failed (above); the server was not started")
    # The server never sees the owner's DSN.
    env.pop("MIGRATIONS_DATABASE_URL", None)
    dev_env = data_dir / "dev.env"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        dev_env.write_text(dev_env_text(env, Path(sys.executable).parent), encoding="utf-8")
        dev_env.chmod(0o600)  # it holds the tokens
    except OSError as error:
        raise StartupError(
            f"DATA_DIR={data_dir}: cannot write dev.env ({error.strerror})"
        ) from None
    procs = [subprocess.Popen([sys.executable, "-m", "creditwallet.server"], env=env)]
    if importlib.util.find_spec("creditwallet.gateway.__main__") is not None:
        procs.append(subprocess.Popen([sys.executable, "-m", "creditwallet.gateway"], env=env))
    console = importlib.util.find_spec("jinja2") is not None
    if console:
        procs.append(
            subprocess.Popen([sys.executable, "-m", "creditwallet.client.console"], env=env)
        )
    print(f"gRPC server   {env['GRPC_ADDRESS']}")
    print(f"metrics       http://{env['METRICS_ADDRESS']}/metrics")
    print(f"gateway       http://{env['GATEWAY_ADDRESS']}  (POST /stripe/webhook, POST /rollover)")
    if console:
        print(f"console       http://{env['CONSOLE_ADDRESS']}/  (sign in with ADMIN_TOKEN below)")
    print(f"generated     {', '.join(made) if made else 'nothing (all set in the environment)'}")
    print(f"wrote {dev_env}; in another terminal: . {dev_env}")
    print(dev_env_text(env, Path(sys.executable).parent), end="", flush=True)
    print("Ctrl-C stops everything.", flush=True)
    return _supervise(procs)


def _supervise(procs: list[subprocess.Popen[bytes]]) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(limits.SUPERVISOR_POLL_SECONDS)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + limits.DEVRUN_STOP_GRACE_SECONDS
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
    print("stopped.", flush=True)
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
