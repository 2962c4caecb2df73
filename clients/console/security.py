"""The console's HTTP defences, as one aiohttp middleware in front of every page.

- Headers on every answer: a Content-Security-Policy that allows no script at all (and
  styles and images from the console only), no framing, no sniffing, no referrer to other
  sites, no caching.
- Sessions: every page but sign-in and the stylesheet needs a live session cookie; without
  one the browser is sent to sign in.
- Every POST must come from the console's own pages: a browser's ``Sec-Fetch-Site`` or
  ``Origin`` naming anything else is refused, and
  a signed-in POST must carry the session's CSRF token (compared in constant time), else it
  is refused with 403 and nothing is sent to the ledger.
- Any unexpected error becomes a page that says so; the details go to the log, never to
  the browser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from creditwallet.client.console.sessions import Session, SessionStore, same_secret

log = logging.getLogger("creditwallet.console")

CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" with the
    # console's own forms, which the Origin check would refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS: Final = "max-age=31536000"
CSRF_FIELD: Final = "csrf"
OPEN_PATHS: Final = frozenset({"/sign-in", "/static/console.css"})

SESSIONS = web.AppKey("sessions", SessionStore)
COOKIE = web.AppKey("cookie", str)
SECURE = web.AppKey("secure", bool)
SESSION_KEY = web.RequestKey("session", Session)

Refuse = Callable[[web.Request, int, str], web.StreamResponse]


def cookie_name(secure: bool) -> str:
    # __Host- makes the browser refuse it unless Secure, for "/", with no Domain.
    return "__Host-cw_console" if secure else "cw_console"


def session_of(request: web.Request) -> Session:
    return request[SESSION_KEY]


def see_other(location: str) -> web.Response:
    """A redirect after a form (303: the browser follows it with a GET)."""
    return web.Response(status=303, headers={"Location": location})


def same_origin(request: web.Request) -> bool:
    """False for a POST a browser says comes from anywhere but the console's own pages
    (``Sec-Fetch-Site``, then ``Origin``). A request with neither is no browser's cross-site
    form; it still needs the session's CSRF token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    scheme = "https" if request.app[SECURE] else request.scheme
    return origin == f"{scheme}://{request.host}"


def middleware(refuse: Refuse) -> Middleware:
    @web.middleware
    async def defend(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await _checked(request, handler, refuse)
        except web.HTTPRequestEntityTooLarge:
            response = refuse(request, 413, "refused: the form is too large")
        except web.HTTPNotFound:
            response = refuse(request, 404, "there is no such page")
        except web.HTTPMethodNotAllowed:
            response = refuse(request, 405, "this page does not take that method")
        except Exception:
            log.exception("console page failed", extra={"path": request.path})
            response = refuse(request, 500, "the console failed to show this page (logged)")
        for name, value in HEADERS.items():
            response.headers[name] = value
        if request.app[SECURE]:
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    return defend


async def _checked(request: web.Request, handler: Handler, refuse: Refuse) -> web.StreamResponse:
    if request.method == "POST" and not same_origin(request):
        return refuse(request, 403, "refused: the form was not sent from this console")
    if request.path in OPEN_PATHS:
        return await handler(request)
    session = request.app[SESSIONS].get(request.cookies.get(request.app[COOKIE], ""))
    if session is None:
        if request.method == "POST":
            return refuse(request, 403, "refused: you are not signed in (or the session ended)")
        return see_other("/sign-in")
    request[SESSION_KEY] = session
    if request.method == "POST":
        form = await request.post()
        given = form.get(CSRF_FIELD)
        if not isinstance(given, str) or not same_secret(given, session.csrf_token):
            return refuse(request, 403, "refused: the form has no valid CSRF token")
    return await handler(request)
