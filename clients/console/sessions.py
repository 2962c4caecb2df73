"""The console's only state: who is signed in, in memory, bounded in number and in time.

Why in memory: a console restart signing everyone out is a feature (a restart is how an
operator revokes every session at once), and it keeps the console free of any store of its
own. A session is a random id (the cookie) and a random CSRF token that every form that
changes anything must echo; both are compared in constant time. A session ends at sign-out,
after ``CONSOLE_SESSION_LIFETIME_SECONDS`` whatever happens, or after
``CONSOLE_SESSION_IDLE_SECONDS`` unused; at most ``CONSOLE_SESSIONS_MAX`` live at once, the
oldest going first.

Sign-in attempts are counted per client address: after ``CONSOLE_SIGN_IN_FAILURES_MAX``
wrong tokens, that address waits ``CONSOLE_SIGN_IN_PAUSE_SECONDS`` before the next try, so the
admin token cannot be guessed through the console at speed.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import secrets
import time
from collections.abc import Callable

from creditwallet.core import limits


@dataclasses.dataclass
class Session:
    session_id: str
    csrf_token: str
    created: float
    last_used: float
    # One notice to show on the next page (what the last action did), then forgotten.
    notice: str = ""


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets, whatever their lengths."""
    return hmac.compare_digest(given.encode(), expected.encode())


class SessionStore:
    """Sessions by id, oldest first; every lookup drops the sessions that have ended."""

    def __init__(
        self,
        *,
        sessions_max: int = limits.CONSOLE_SESSIONS_MAX,
        lifetime_seconds: float = limits.CONSOLE_SESSION_LIFETIME_SECONDS,
        idle_seconds: float = limits.CONSOLE_SESSION_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._sessions_max = sessions_max
        self._lifetime = lifetime_seconds
        self._idle = idle_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self) -> Session:
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self._sessions_max:
            self._sessions.popitem(last=False)
        session = Session(
            session_id=secrets.token_urlsafe(limits.CONSOLE_SESSION_ID_BYTES),
            csrf_token=secrets.token_urlsafe(limits.CONSOLE_CSRF_TOKEN_BYTES),
            created=now,
            last_used=now,
        )
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session of a cookie value, or None; using it keeps it from going idle."""
        now = self._clock()
        self._expire(now)
        if not session_id or len(session_id) > 2 * limits.CONSOLE_SESSION_ID_BYTES:
            return None
        # Looked up by its hash-table key, then confirmed in constant time.
        session = self._sessions.get(session_id)
        if session is None or not same_secret(session_id, session.session_id):
            return None
        session.last_used = now
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        ended = [
            sid
            for sid, s in self._sessions.items()
            if now - s.created >= self._lifetime or now - s.last_used >= self._idle
        ]
        for sid in ended:
            del self._sessions[sid]


class SignInThrottle:
    """Wrong sign-ins per client address; an address over the limit waits a pause."""

    def __init__(
        self,
        *,
        failures_max: int = limits.CONSOLE_SIGN_IN_FAILURES_MAX,
        pause_seconds: float = limits.CONSOLE_SIGN_IN_PAUSE_SECONDS,
        addresses_max: int = limits.CONSOLE_SIGN_IN_ADDRESSES_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._failures_max = failures_max
        self._pause = pause_seconds
        self._addresses_max = addresses_max
        self._clock = clock

    def blocked(self, address: str) -> bool:
        count, last = self._failures.get(address, (0, 0.0))
        if count < self._failures_max:
            return False
        if self._clock() - last >= self._pause:
            del self._failures[address]
            return False
        return True

    def failed(self, address: str) -> None:
        count, _ = self._failures.pop(address, (0, 0.0))
        self._failures[address] = (count + 1, self._clock())
        while len(self._failures) > self._addresses_max:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
