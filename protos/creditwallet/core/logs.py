"""One logging set-up for every credit-wallet process: the server, the gateway and the tools.

Why one module: an operator reads both processes' logs side by side, often in one collector,
so they must have one shape. ``LOG_FORMAT`` chooses it and ``LOG_LEVEL`` the threshold, read by
``LogSettings.from_env`` for every process:

- ``json`` (the default): one object per line on stderr with ``time`` (RFC 3339, UTC,
  milliseconds, e.g. ``2026-11-25T10:00:00.123Z``), ``level``, ``logger``, ``message``, the
  ``request_id`` of the call being served when there is one, then the record's own fields;
- ``text``: the same facts for a person, ``time LEVEL logger: message key=value ...``; the
  fields are kept (a line like ``rollover finished`` is nothing without its figures).

The request id of the RPC or webhook being served lives in a context variable
(``bind_request_id``), so every line logged while serving it carries it, including lines of
code that never saw the request. A configuration is logged with ``log_config``: one line
whose fields are the settings, secrets shown as ``****``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from creditwallet.core.settings import ConfigError, describe

LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# Loggers whose message already holds their fields (aiohttp's access line repeats them all).
_FIELDS_IN_MESSAGE: Final = frozenset({"aiohttp.access"})

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """``LOG_FORMAT`` (json|text, default json) and ``LOG_LEVEL`` (default INFO)."""

    format: str = "json"
    level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LogSettings:
        log_format = env.get("LOG_FORMAT", "json").strip().lower() or "json"
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"LOG_FORMAT must be json or text, not {log_format!r}")
        level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        return cls(log_format, level)


def bind_request_id(request_id: str) -> contextvars.Token[str]:
    """Every line logged from here on in this task carries ``request_id``."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = bind_request_id(request_id)
    try:
        yield
    finally:
        reset_request_id(token)


def rfc3339_millis(created: float) -> str:
    """A record's time as RFC 3339 in UTC with milliseconds: ``2026-11-25T10:00:00.123Z``."""
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: the request id, then what ``extra=`` added."""
    fields: dict[str, Any] = {}
    request_id = getattr(record, "request_id", None) or _request_id.get()
    if request_id:
        fields["request_id"] = request_id
    if record.name in _FIELDS_IN_MESSAGE:
        return fields
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key != "request_id":
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **fields_of(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``; values with spaces are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"{rfc3339_millis(record.created)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}"
        )
        pairs = [f"{key}={_text_value(value)}" for key, value in fields_of(record).items()]
        line = " ".join([head, *pairs])
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(settings: LogSettings) -> None:
    """Send every logger's records to stderr in the chosen format, at the chosen level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping()[settings.level])


def log_config(logger: logging.Logger, what: str, config: object) -> None:
    """One line, ``<what> configuration``, whose fields are the settings (secrets masked)."""
    logger.info(f"{what} configuration", extra=describe(config))
