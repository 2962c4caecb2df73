"""The README's quickstart, run literally against a fresh ``make run``.

The shell block of README.md's Quickstart section and its Python example are read from the
file and run as a reader would paste them, in a second shell, against the real ``make run``
program (``creditwallet.server.devrun``) started on free ports with a private DATA_DIR, so
the embedded PostgreSQL, the server and the gateway are the real processes. If the README
and the product drift apart, this fails. The curl top-up of docs/billing.md runs too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 90.0
BLOCK_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.2


def section(markdown: str, heading: str) -> str:
    """The text of the ``## heading`` section, up to the next heading of level 1 or 2."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", markdown, re.M | re.S)
    assert match is not None, f"no section {heading!r}"
    return match.group(1)


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, re.M | re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevRun:
    """``make run`` as a child process in a scratch folder laid out like the repository."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data_dir = folder / ".data"
        self.ports = {name: _free_port() for name in ("grpc", "gateway", "metrics", "console")}
        self.log = folder / "make-run.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(folder),
            "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", tempfile.gettempdir()),
            "DATA_DIR": str(self.data_dir),
            "GRPC_ADDRESS": f"127.0.0.1:{self.ports['grpc']}",
            "GATEWAY_ADDRESS": f"127.0.0.1:{self.ports['gateway']}",
            "METRICS_ADDRESS": f"127.0.0.1:{self.ports['metrics']}",
            "CONSOLE_ADDRESS": f"127.0.0.1:{self.ports['console']}",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "creditwallet.server.devrun"],
                cwd=self.folder,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._ready():
            assert self.proc.poll() is None, f"make run exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"make run did not start:\n{self.output()}"
            time.sleep(POLL_SECONDS)

    def _ready(self) -> bool:
        if not (self.data_dir / "dev.env").exists():
            return False
        url = f"http://127.0.0.1:{self.ports['gateway']}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def shell(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run ``script`` as a second terminal would: in the folder, with a plain PATH."""
        env = {key: self.env[key] for key in ("PATH", "HOME", "XDG_RUNTIME_DIR")}
        return subprocess.run(
            ["sh", "-e", "-c", script],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS,
        )

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def dev_run() -> Iterator[DevRun]:
    # A short path: the embedded cluster's unix socket lives under it (108-byte limit).
    folder = Path(tempfile.mkdtemp(prefix="cw-qs-", dir="/tmp"))
    (folder / "protos").symlink_to(REPO_ROOT / "protos")
    run = DevRun(folder)
    try:
        run.start()
        yield run
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_quickstart_block_works_as_written(dev_run: DevRun) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = code_blocks(section(readme, "Quickstart"), "sh")
    assert block.startswith(". .data/dev.env\n")
    done = dev_run.shell(block)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{dev_run.output()}"
    out = done.stdout
    assert "alice (created)" in out
    assert re.search(r"summarizer\s+0\.5\s+page", out)
    assert re.search(r"charged\s+1\.5 credits", out)
    assert re.search(r"available\s+3\.5 credits", out)  # 5 trial - 1.5
    assert re.search(r"debit\s+-1\.5\s+3\.5\s+summarizer x3", out)  # the history row
    assert '"charged_micros": "500000"' in out  # grpcurl's Debit of one page
    assert re.search(r"granted\s+100 credits", out)  # the signed top-up
    assert re.search(r"available\s+103 credits", out)  # the last balance
    assert "Spends credits" in out  # describe shows the proto's comment
    assert "Traceback" not in done.stderr


def test_the_python_example_runs(dev_run: DevRun) -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    (example,) = code_blocks(section(readme, "Quickstart"), "python")
    script = dev_run.folder / "example.py"
    script.write_text(example, encoding="utf-8")
    done = dev_run.shell(". .data/dev.env\npython3 example.py\n")
    assert done.returncode == 0, done.stderr
    # bob's 5 trial credits, 2 pages of summarizer at 0.5 (the quickstart set the price).
    assert done.stdout.split() == ["charged", "1000000", "available", "4000000"]


def test_the_curl_top_up_of_the_billing_doc_works(dev_run: DevRun) -> None:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("needs openssl and curl")
    doc = (REPO_ROOT / "docs" / "billing.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in code_blocks(section(doc, "Sending a top-up locally"), "sh") if "curl" in b
    ]
    done = dev_run.shell(". .data/dev.env\n" + block)
    assert done.returncode == 0, done.stderr
    assert '"method": "RecordPurchase"' in done.stdout or '"RecordPurchase"' in done.stdout
    assert '"grantedMicros": "100000000"' in done.stdout


def test_make_run_starts_the_console_and_prints_where_and_how_to_sign_in(
    dev_run: DevRun,
) -> None:
    url = f"http://127.0.0.1:{dev_run.ports['console']}/"
    assert f"console       {url}" in dev_run.output()
    token = re.search(r"^export ADMIN_TOKEN=(\S+)$", dev_run.output(), re.M)
    assert token is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url + "sign-in", timeout=2) as reply:
                assert reply.status == 200
                assert "Admin token" in reply.read().decode()
                break
        except OSError:
            assert time.monotonic() < deadline, dev_run.output()
            time.sleep(POLL_SECONDS)
    # The printed token signs in: the console answers with its session cookie.
    request = urllib.request.Request(
        url + "sign-in", data=f"token={token.group(1).strip(chr(39))}".encode(), method="POST"
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(request, timeout=5)
    assert answer.value.code == 303
    assert answer.value.headers["Location"] == "/accounts"
    assert "HttpOnly" in answer.value.headers["Set-Cookie"]
    answer.value.close()


def test_make_run_wrote_and_printed_dev_env_and_stops_cleanly(dev_run: DevRun) -> None:
    dev_env = (dev_run.data_dir / "dev.env").read_text(encoding="utf-8")
    for name in (
        "ADMIN_TOKEN",
        "AGENT_TOKEN",
        "GRPC_ADDRESS",
        "STRIPE_WEBHOOK_SECRET",
        "PATH",
        "CONSOLE_ADDRESS",
    ):
        assert f"export {name}=" in dev_env
    assert oct((dev_run.data_dir / "dev.env").stat().st_mode & 0o777) == "0o600"
    assert f"GRPC_ADDRESS=127.0.0.1:{dev_run.ports['grpc']}" in dev_env
    assert dev_env.splitlines()[-1] in dev_run.output()  # printed as well as written
    assert dev_run.stop() == 0
    output = dev_run.output()
    assert "stopped." in output
    assert "Traceback" not in output
