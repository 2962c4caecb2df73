"""What the processes' entry points share to start or to say, in one line, why they cannot.

Why here: the server and the gateway both listen on an address taken from a variable, and
both must turn "cannot start" into one line naming that variable and the fix, never a
traceback. ``run_command`` wraps an entry point's body: a ``ConfigError`` exits 2 (the
settings are wrong), a ``StartupError`` exits 1 (the settings are right but the world is not:
a port taken, a database down).
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable

from creditwallet.core.settings import ConfigError, StartupError

EXIT_CONFIG = 2
EXIT_CANNOT_START = 1
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; print a ``ConfigError`` or ``StartupError`` as ``prog: message``."""
    try:
        return body()
    except ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    except KeyboardInterrupt:
        return 130


def split_host_port(variable: str, address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) or a ``ConfigError`` naming the variable."""
    host, _, port = address.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{variable} must be host:port (e.g. 127.0.0.1:8080), not {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_can_listen(variable: str, address: str) -> None:
    """Fail early, naming the variable, when ``address`` cannot be listened on.

    A probe bind, released at once: the real server binds a moment later. Port 0 (any free
    port) always works and is not probed.
    """
    host, port = split_host_port(variable, address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(
            f"{variable}={address}: unknown host {host!r} ({error.strerror}): use an address "
            "of this machine, e.g. 127.0.0.1"
        ) from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as error:
            raise StartupError(listen_failure(variable, address, error)) from None


def listen_failure(variable: str, address: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"{variable}={address}: the port is in use by another process: stop it, or set "
            f"{variable} to a free host:port"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{variable}={address}: not an address of this machine: use one of its own, "
            "e.g. 127.0.0.1"
        )
    if error.errno == errno.EACCES:
        return f"{variable}={address}: permission denied: use a port above 1023"
    return f"{variable}={address}: cannot listen there ({error.strerror})"


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for errors with no better explanation."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
