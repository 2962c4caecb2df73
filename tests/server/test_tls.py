"""TLS and mutual TLS from certificate paths, with certificates made by the test.

The server reads TLS_CERT_PATH / TLS_KEY_PATH (and TLS_CLIENT_CA_PATH for mutual TLS) into
its config; ``app._credentials`` turns them into gRPC server credentials. A client that
trusts the test CA gets through; one that does not (the system roots), or speaks plaintext,
does not; under mutual TLS a client without a certificate is refused at the handshake. The gateway,
configured from ``LEDGER_TLS_*`` paths, reaches a TLS-only and an mTLS-only ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.gateway.config import GatewayConfig
from creditwallet.server import app

from tests import certs, harness
from tests import stripe_fakes as sf

CALL_TIMEOUT_SECONDS = 3.0


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> certs.Certs:
    return certs.make(tmp_path_factory.mktemp("certs"))


async def _start(
    base_dsn: str, data_dir: Path, made: certs.Certs, mutual: bool
) -> app.RunningServer:
    config = dataclasses.replace(
        harness.config(data_dir),
        tls_cert_path=made.server_cert,
        tls_key_path=made.server_key,
        tls_client_ca_path=made.ca if mutual else None,
    )
    dsn = await harness.fresh_database(base_dsn)
    return await app.start(config, dsn=dsn, address="127.0.0.1:0")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_server(base_dsn: str, data_dir: Path, made: certs.Certs) -> AsyncIterator[str]:
    running = await _start(base_dsn, data_dir, made, mutual=False)
    yield f"127.0.0.1:{running.port}"
    await running.stop(grace_seconds=1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mtls_server(base_dsn: str, data_dir: Path, made: certs.Certs) -> AsyncIterator[str]:
    running = await _start(base_dsn, data_dir, made, mutual=True)
    yield f"127.0.0.1:{running.port}"
    await running.stop(grace_seconds=1.0)


async def _ensure(
    target: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> None:
    client = AsyncCreditWalletClient(
        target,
        harness.TOKENS["agent"],
        retries=0,
        timeout_seconds=CALL_TIMEOUT_SECONDS,
        tls=tls,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    try:
        await client.ensure_account(harness.new_user())
    finally:
        await client.close()


async def test_tls_call_succeeds_with_the_ca(tls_server: str, made: certs.Certs) -> None:
    await _ensure(tls_server, root_certificates=made.ca.read_bytes())


async def test_tls_call_fails_without_the_ca(tls_server: str) -> None:
    with pytest.raises(cw.CreditWalletError) as refused:
        await _ensure(tls_server, tls=True)  # the system's roots do not know our CA
    assert refused.value.reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


async def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: str) -> None:
    with pytest.raises(cw.CreditWalletError):
        await _ensure(tls_server)


async def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: str, made: certs.Certs
) -> None:
    with pytest.raises(cw.CreditWalletError) as refused:
        await _ensure(mtls_server, root_certificates=made.ca.read_bytes())
    assert refused.value.reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


async def test_mtls_accepts_a_client_with_a_certificate(
    mtls_server: str, made: certs.Certs
) -> None:
    await _ensure(
        mtls_server,
        root_certificates=made.ca.read_bytes(),
        private_key=made.client_key.read_bytes(),
        certificate_chain=made.client_cert.read_bytes(),
    )


async def _gateway_purchase(target: str, made: certs.Certs, *, client_cert: bool) -> int:
    """One signed top-up through a gateway configured with LEDGER_TLS_* paths: its status."""
    fake = sf.FakeStripe()
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    stripe_runner, stripe_url = await sf.serve(fake.app())
    env = {
        "BILLING_TOKEN": harness.TOKENS["billing"],
        "STRIPE_WEBHOOK_SECRET": sf.SECRETS[0],
        "CRON_SECRET": sf.CRON_SECRET,
        "STRIPE_SECRET_KEY": "sk_test_fake",
        "STRIPE_API_BASE": stripe_url,
        "LEDGER_TARGET": target,
        "LEDGER_TLS_CA_PATH": str(made.ca),
        "GATEWAY_ADDRESS": "127.0.0.1:0",
    }
    if client_cert:
        env["LEDGER_TLS_CERT_PATH"] = str(made.client_cert)
        env["LEDGER_TLS_KEY_PATH"] = str(made.client_key)
    config = dataclasses.replace(GatewayConfig.from_env(env), rpc_timeout_seconds=3.0)
    runner, url = await sf.start_gateway(config)
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="payment",
        payment_status="paid",
        client_reference_id=harness.new_user(),
        payment_intent=sf.new_id("pi"),
        amount_subtotal=1999,
        currency="usd",
    )
    fake.line_items[session["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    body = sf.event("checkout.session.completed", session, 1)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            reply = await sf.Gateway(url, http).deliver(body)
            async with http.get(url + "/healthz") as health:
                assert (health.status == 200) == (reply.status == 200)
            return reply.status
    finally:
        await runner.cleanup()
        await stripe_runner.cleanup()


async def test_the_gateway_reaches_a_tls_only_ledger(tls_server: str, made: certs.Certs) -> None:
    assert await _gateway_purchase(tls_server, made, client_cert=False) == 200


async def test_the_gateway_reaches_an_mtls_only_ledger_with_its_certificate(
    mtls_server: str, made: certs.Certs
) -> None:
    assert await _gateway_purchase(mtls_server, made, client_cert=True) == 200
    # Without its certificate the handshake fails: UNAVAILABLE, so 503 and Stripe retries.
    assert await _gateway_purchase(mtls_server, made, client_cert=False) == 503
