"""Test certificates made with the ``openssl`` CLI: a CA, a server cert, a client cert.

Why the CLI: the ``cryptography`` package is not a dependency, and every test machine has
openssl. EC P-256 keys, one day of validity; the server cert names 127.0.0.1 and localhost
in its subjectAltName, as gRPC checks the target's host against it.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

OPENSSL_TIMEOUT_SECONDS = 30
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_SECONDS,
    )


def _signed(name: str, extensions: str, folder: Path) -> None:
    _openssl(
        "req",
        *_KEY,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.pem",
        "-extfile",
        f"{name}.ext",
        cwd=folder,
    )


def make(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        *_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=credit-wallet test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    _signed(
        "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", folder
    )
    _signed("client", "extendedKeyUsage=clientAuth\n", folder)
    return Certs(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )
