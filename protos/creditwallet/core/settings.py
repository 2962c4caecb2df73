"""What every process's configuration shares: the masked secret type and the start-up error.

Each process reads its environment once into one frozen object (``ServerConfig``,
``GatewayConfig``); a value that is missing or malformed stops start-up with a ``ConfigError``
naming the variable. Secrets are ``Secret`` objects whose ``repr`` and ``str`` are masked, so a
log line or a traceback that prints a config never shows a token.
"""

from __future__ import annotations

import dataclasses


class ConfigError(Exception):
    """A required setting is missing or malformed; start-up stops with its name."""


@dataclasses.dataclass(frozen=True)
class Secret:
    value: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def bytes(self) -> bytes:
        return self.value.encode()
