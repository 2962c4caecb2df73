"""The console's configuration: read once from the environment into one frozen object.

Operators sign in with the ledger's admin token (``ADMIN_TOKEN``), which is also the token
the console presents to the ledger: whoever may use the console may call AdminService anyway,
and one secret fewer is one rotation fewer. The session cookie is ``Secure`` when the console
serves TLS itself (``CONSOLE_TLS_CERT_PATH`` and ``CONSOLE_TLS_KEY_PATH``) or says it is
behind a proxy that does (``CONSOLE_BEHIND_TLS=on``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from creditwallet.core import limits
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, Secret, ledger_tls
from creditwallet.core.startup import split_host_port

DEFAULT_ADDRESS = "127.0.0.1:8090"


@dataclasses.dataclass(frozen=True)
class ConsoleConfig:
    host: str
    port: int
    ledger_target: str
    admin_token: Secret
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    behind_tls: bool = False
    ledger_tls: bool = False
    ledger_tls_ca_path: Path | None = None
    ledger_tls_cert_path: Path | None = None
    ledger_tls_key_path: Path | None = None
    rpc_timeout_seconds: float = limits.CONSOLE_RPC_TIMEOUT_SECONDS
    log: LogSettings = dataclasses.field(default_factory=LogSettings)

    @property
    def secure_cookies(self) -> bool:
        """Whether browsers reach the console over TLS (its own or a proxy's)."""
        return self.behind_tls or self.tls_cert_path is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleConfig:
        env = os.environ if env is None else env
        host, port = split_host_port("CONSOLE_ADDRESS", env.get("CONSOLE_ADDRESS", DEFAULT_ADDRESS))
        token = env.get("ADMIN_TOKEN", "").strip()
        if not token:
            raise ConfigError(
                "ADMIN_TOKEN is not set: set it to the ledger's admin-scope token (operators "
                "sign in with it)"
            )
        if len(token) < limits.TOKEN_LENGTH_MIN or any(c.isspace() for c in token):
            raise ConfigError(
                f"ADMIN_TOKEN: a token must be at least {limits.TOKEN_LENGTH_MIN} characters "
                "without spaces"
            )
        paths: dict[str, Path | None] = {}
        for name in ("CONSOLE_TLS_CERT_PATH", "CONSOLE_TLS_KEY_PATH"):
            value = env.get(name, "").strip()
            path = Path(value) if value else None
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: {path} is not a readable file")
            paths[name] = path
        cert, key = paths["CONSOLE_TLS_CERT_PATH"], paths["CONSOLE_TLS_KEY_PATH"]
        if (cert is None) != (key is None):
            missing = "CONSOLE_TLS_CERT_PATH" if cert is None else "CONSOLE_TLS_KEY_PATH"
            raise ConfigError(f"{missing} is required: the certificate and key go together")
        behind = env.get("CONSOLE_BEHIND_TLS", "").strip().lower()
        if behind not in ("", "on", "off"):
            raise ConfigError("CONSOLE_BEHIND_TLS must be on or off")
        tls = ledger_tls(env)
        return cls(
            host=host,
            port=port,
            ledger_target=env.get("LEDGER_TARGET") or env.get("GRPC_ADDRESS") or "127.0.0.1:50051",
            admin_token=Secret(token),
            tls_cert_path=cert,
            tls_key_path=key,
            behind_tls=behind == "on",
            ledger_tls=tls[0],
            ledger_tls_ca_path=tls[1],
            ledger_tls_cert_path=tls[2],
            ledger_tls_key_path=tls[3],
            log=LogSettings.from_env(env),
        )
