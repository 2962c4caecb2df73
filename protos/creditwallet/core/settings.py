"""What every process's configuration shares: the masked secret type and the start-up error.

Each process reads its environment once into one frozen object (``ServerConfig``,
``GatewayConfig``); a value that is missing or malformed stops start-up with a ``ConfigError``
naming the variable. Secrets are ``Secret`` objects whose ``repr`` and ``str`` are masked, so a
log line or a traceback that prints a config never shows a token; ``describe`` turns a config
into the fields of the one log line that records it at start-up.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Final

MASK: Final = "****"


class ConfigError(Exception):
    """A required setting is missing or malformed; start-up stops with its name.

    The message is one line that names the variable and says what would fix it; the entry
    points print it as ``<command>: <message>`` and exit 2, never with a traceback.
    """


class StartupError(Exception):
    """The settings are well formed but the process cannot start with them (the database does
    not answer, the port is taken, a file is missing): one line, printed like ``ConfigError``."""


@dataclasses.dataclass(frozen=True)
class Secret:
    value: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def bytes(self) -> bytes:
        return self.value.encode()


def describe(config: object) -> dict[str, Any]:
    """A config dataclass as plain loggable fields: secrets masked, paths as text, unset as "".

    Nested dataclasses are flattened with their field name as a prefix (``log_level``).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"describe() needs a dataclass instance, not {type(config).__name__}")
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type | Secret):
            for key, inner in describe(value).items():
                fields[f"{field.name}_{key}"] = inner
        else:
            fields[field.name] = _plain(value)
    return fields


def _plain(value: object) -> Any:
    if isinstance(value, Secret):
        return MASK
    if value is None:
        return ""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple | list):
        return ",".join(str(_plain(item)) for item in value)
    if isinstance(value, str):
        return mask_url_password(value)
    if isinstance(value, bool | int | float):
        return value
    return str(value)


def mask_url_password(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:****@host``; other text unchanged."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or parts.password is None or parts.password == "":
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def ledger_tls(env: Mapping[str, str]) -> tuple[bool, Path | None, Path | None, Path | None]:
    """(TLS on, CA, client certificate, client key) of a process that calls the ledger.

    ``LEDGER_TLS_CA_PATH`` (the CA to trust) or ``LEDGER_TLS=on`` (the system's roots) turn
    TLS on; ``LEDGER_TLS_CERT_PATH`` with ``LEDGER_TLS_KEY_PATH`` add a client certificate
    (mutual TLS), both or neither. The gateway and the console read the same variables.
    """
    switch = env.get("LEDGER_TLS", "").strip().lower()
    if switch not in ("", "on", "off"):
        raise ConfigError("LEDGER_TLS must be on or off")
    paths: dict[str, Path | None] = {}
    for name in ("LEDGER_TLS_CA_PATH", "LEDGER_TLS_CERT_PATH", "LEDGER_TLS_KEY_PATH"):
        value = env.get(name, "").strip()
        path = Path(value) if value else None
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")
        paths[name] = path
    cert, key = paths["LEDGER_TLS_CERT_PATH"], paths["LEDGER_TLS_KEY_PATH"]
    if (cert is None) != (key is None):
        missing = "LEDGER_TLS_CERT_PATH" if cert is None else "LEDGER_TLS_KEY_PATH"
        raise ConfigError(f"{missing} is required: the client certificate and key go together")
    tls = switch == "on" or any(p is not None for p in paths.values())
    if switch == "off" and tls:
        raise ConfigError("LEDGER_TLS=off contradicts the LEDGER_TLS_* paths that are set")
    return tls, paths["LEDGER_TLS_CA_PATH"], cert, key
