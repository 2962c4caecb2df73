"""The console's pages: aiohttp handlers that call the ledger and render templates.

Every change goes through two POSTs: the form (checked here, then shown back as a
confirmation page that says exactly what will happen), then the confirmation, which carries
a ``request_id`` chosen when the confirmation page was drawn. Submitting it twice is
therefore a replay the ledger answers from its records, never a second grant. After a
change the browser is sent back to the page it came from (POST, redirect, GET), with one
notice saying what was done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web
from creditwallet.client import builders
from creditwallet.client.console import charts, forms, security, usage
from creditwallet.client.console.config import ConsoleConfig
from creditwallet.client.console.sessions import SessionStore, SignInThrottle, same_secret
from creditwallet.client.errors import CreditWalletError
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits, reasons
from creditwallet.core.units import format_credits
from creditwallet.v1 import common_pb2, events_pb2

log = logging.getLogger("creditwallet.console")

HERE: Final = Path(__file__).parent
LEDGER = web.AppKey("ledger", AsyncCreditWalletClient)
CONFIG = web.AppKey("config", ConsoleConfig)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
THROTTLE = web.AppKey("throttle", SignInThrottle)
TYPE_FILTERS: Final = ("", "grant", "debit", "expire", "reversal", "clawback", "expiry_change")


def enum_name(prefix: str, name: str) -> str:
    """``LOT_SOURCE_TOP_UP`` -> ``top up``: how people read the proto's enum names."""
    return name.removeprefix(prefix).lower().replace("_", " ")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["credits"] = format_credits
    env.filters["source"] = lambda v: enum_name("LOT_SOURCE_", common_pb2.LotSource.Name(v))
    env.filters["txtype"] = lambda v: enum_name(
        "TRANSACTION_TYPE_", common_pb2.TransactionType.Name(v)
    )
    env.filters["subscription"] = lambda v: enum_name(
        "SUBSCRIPTION_STATUS_", common_pb2.SubscriptionStatus.Name(v)
    )
    env.filters["when"] = _when
    env.filters["quote"] = lambda v: urllib.parse.quote(str(v), safe="")
    return env


def _when(ts: Any) -> str:
    if ts is None or (not ts.seconds and not ts.nanos):
        return ""
    return str(ts.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def render(request: web.Request, name: str, status: int = 200, **values: Any) -> web.Response:
    session = request.get(security.SESSION_KEY)
    notice = ""
    if session is not None:
        notice, session.notice = session.notice, ""
    html = (
        request.app[TEMPLATES]
        .get_template(name)
        .render(
            csrf=session.csrf_token if session is not None else "",
            signed_in=session is not None,
            notice=notice,
            path=request.path,
            **values,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def refuse(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "refused.html", status=status, message=message, reason=None)


def refusal_words(error: CreditWalletError) -> dict[str, str]:
    """The ledger's reason for a refusal, in words: what it means, then what it said."""
    known = reasons.BY_NAME.get(error.reason)
    meaning = known.meaning if known is not None else "the ledger refused the request"
    if error.reason == "UNAVAILABLE":
        meaning = "the ledger does not answer; try again in a moment"
    return {"reason": error.reason, "meaning": meaning, "message": error.message}


def refused_by_ledger(request: web.Request, error: CreditWalletError, back: str) -> web.Response:
    status = 503 if error.reason in ("UNAVAILABLE", "DATABASE_UNAVAILABLE") else 409
    if error.reason in ("INVALID_ARGUMENT",):
        status = 400
    elif error.reason.endswith("NOT_FOUND"):
        status = 404
    return render(
        request,
        "refused.html",
        status=status,
        message="",
        reason=refusal_words(error),
        back=back,
    )


def account_path(user_id: str) -> str:
    return "/accounts/" + urllib.parse.quote(user_id, safe="")


async def form_of(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


# Sign-in and sign-out.


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    return render(request, "sign_in.html", error="")


async def sign_in(request: web.Request) -> web.StreamResponse:
    address = request.remote or ""
    throttle = request.app[THROTTLE]
    if throttle.blocked(address):
        return render(
            request, "sign_in.html", status=429, error="too many wrong tokens: wait a minute"
        )
    token = (await form_of(request)).get("token", "")
    if not same_secret(token, request.app[CONFIG].admin_token.value):
        throttle.failed(address)
        log.warning("console sign-in refused", extra={"client": address})
        return render(request, "sign_in.html", status=401, error="that token is not the one")
    throttle.succeeded(address)
    session = request.app[security.SESSIONS].open()
    log.info("console sign-in", extra={"client": address})
    response = security.see_other("/accounts")
    response.set_cookie(
        request.app[security.COOKIE],
        session.session_id,
        max_age=limits.CONSOLE_SESSION_LIFETIME_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.app[security.SECURE],
    )
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    request.app[security.SESSIONS].close(security.session_of(request).session_id)
    response = security.see_other("/sign-in")
    response.del_cookie(request.app[security.COOKIE], path="/")
    return response


# Accounts.


async def search(request: web.Request) -> web.StreamResponse:
    user_id = request.query.get("user_id", "").strip()
    if not user_id:
        return render(request, "search.html", query="", reason=None)
    try:
        await request.app[LEDGER].get_balance(user_id)
    except CreditWalletError as error:
        return render(
            request, "search.html", status=404, query=user_id, reason=refusal_words(error)
        )
    return security.see_other(account_path(user_id))


async def account(request: web.Request) -> web.StreamResponse:
    return await _account(request, request.match_info["user_id"])


async def _account(
    request: web.Request, user_id: str, *, status: int = 200, form_error: str = ""
) -> web.StreamResponse:
    ledger = request.app[LEDGER]
    type_filter = request.query.get("type", "")
    if type_filter not in TYPE_FILTERS:
        type_filter = ""
    after = request.query.get("after", "")
    tx_type = (
        common_pb2.TransactionType.Value("TRANSACTION_TYPE_" + type_filter.upper())
        if type_filter
        else common_pb2.TRANSACTION_TYPE_UNSPECIFIED
    )
    try:
        balance = await ledger.get_balance(user_id)
        holds = await ledger.list_holds(user_id, page_size=limits.CONSOLE_LIST_ROWS_MAX)
        history = await ledger.list_transactions(
            user_id, page_size=limits.CONSOLE_HISTORY_PAGE_SIZE, page_token=after, type=tx_type
        )
        series = await usage.account_series(ledger, user_id, dt.datetime.now(dt.UTC))
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/accounts")
    balance_chart = charts.line(
        "Balance at the end of each day (held credits included)",
        series.days,
        series.balance_micros,
    )
    spend_chart = charts.stacked(
        "Credits spent per day by agent", series.days, series.spent_by_agent
    )
    return render(
        request,
        "account.html",
        status=status,
        user_id=user_id,
        balance=balance,
        holds=holds.holds,
        more_holds=bool(holds.next_page_token),
        history=history.transactions,
        next_page=history.next_page_token,
        paged=bool(after),
        type_filter=type_filter,
        type_filters=TYPE_FILTERS,
        sources=forms.GRANT_SOURCES,
        series=series,
        balance_chart=balance_chart,
        spend_chart=spend_chart,
        reverse_prefill=request.query.get("reverse", ""),
        form_error=form_error,
        account_path=account_path(user_id),
    )


def _confirm(
    request: web.Request,
    title: str,
    lines: list[str],
    action: str,
    fields: Mapping[str, str],
    back: str,
) -> web.Response:
    return render(
        request,
        "confirm.html",
        title=title,
        lines=lines,
        action=action,
        fields={**fields, "step": "apply", "request_id": builders.new_request_id()},
        back=back,
    )


def _request_id(form: Mapping[str, str]) -> str:
    value = form.get("request_id", "")
    try:
        uuid.UUID(value)
    except ValueError:
        raise forms.FormError("the confirmation is malformed: start again") from None
    return value


def _expiry_text(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "the source's default"


async def grant(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    form = await form_of(request)
    back = account_path(user_id)
    try:
        grant = forms.Grant.read(form)
        if form.get("step") != "apply":
            return _confirm(
                request,
                f"Grant credits to {user_id}?",
                [
                    f"Grant {charts.amount_text(grant.amount_micros)}",
                    f"as a new {grant.source.replace('_', ' ')} lot",
                    f"expiry: {_expiry_text(grant.expires_at)}",
                    f"note: {grant.note.get(forms.NOTE_KEY, '(none)')}",
                ],
                back + "/grant",
                {k: form.get(k, "") for k in ("source", "amount", "expires_at", "note")},
                back,
            )
        request_id = _request_id(form)
    except forms.FormError as error:
        return await _account(request, user_id, status=400, form_error=str(error))
    try:
        reply = await request.app[LEDGER].grant(
            user_id,
            grant.amount_micros,
            forms.source_value(grant.source),
            expires_at=grant.expires_at,
            request_id=request_id,
            metadata={**grant.note, "by": "console"},
        )
    except CreditWalletError as error:
        return refused_by_ledger(request, error, back)
    security.session_of(request).notice = (
        f"Granted {format_credits(grant.amount_micros)} credits (transaction "
        f"{reply.transaction_id}{', replayed' if reply.replayed else ''}); available now "
        f"{format_credits(reply.available_micros)}."
    )
    return security.see_other(back)


async def reverse(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    form = await form_of(request)
    back = account_path(user_id)
    try:
        reversal = forms.Reversal.read(form)
        if form.get("step") != "apply":
            what = (
                charts.amount_text(reversal.amount_micros)
                if reversal.amount_micros is not None
                else "everything not yet reversed"
            )
            return _confirm(
                request,
                f"Reverse debit {reversal.transaction_id} of {user_id}?",
                [
                    f"Give back {what}",
                    "to the lots the debit's credits came from",
                    f"note: {reversal.note.get(forms.NOTE_KEY, '(none)')}",
                ],
                back + "/reverse",
                {k: form.get(k, "") for k in ("transaction_id", "amount", "note")},
                back,
            )
        request_id = _request_id(form)
    except forms.FormError as error:
        return await _account(request, user_id, status=400, form_error=str(error))
    try:
        reply = await request.app[LEDGER].reverse_debit(
            user_id,
            reversal.transaction_id,
            amount_micros=reversal.amount_micros,
            request_id=request_id,
            metadata={**reversal.note, "by": "console"},
        )
    except CreditWalletError as error:
        return refused_by_ledger(request, error, back)
    security.session_of(request).notice = (
        f"Reversed {format_credits(reply.reversed_micros)} credits of debit "
        f"{reversal.transaction_id}{' (replayed)' if reply.replayed else ''}; available now "
        f"{format_credits(reply.available_micros)}."
    )
    return security.see_other(back)


async def void(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    form = await form_of(request)
    back = account_path(user_id)
    hold_id = form.get("hold_id", "").strip()
    try:
        if form.get("step") != "apply":
            return _confirm(
                request,
                f"Void hold {hold_id} of {user_id}?",
                ["Release every credit the hold reserves; it can no longer be captured."],
                back + "/void",
                {"hold_id": hold_id},
                back,
            )
        request_id = _request_id(form)
    except forms.FormError as error:
        return await _account(request, user_id, status=400, form_error=str(error))
    try:
        reply = await request.app[LEDGER].void(user_id, hold_id, request_id=request_id)
    except CreditWalletError as error:
        return refused_by_ledger(request, error, back)
    security.session_of(request).notice = (
        f"Voided hold {hold_id}: released {format_credits(reply.released_micros)} credits; "
        f"available now {format_credits(reply.available_micros)}."
    )
    return security.see_other(back)


# Prices, overview, webhooks.


async def prices(
    request: web.Request, *, status: int = 200, form_error: str = ""
) -> web.StreamResponse:
    try:
        listed = await request.app[LEDGER].list_agent_prices(
            page_size=limits.CONSOLE_LIST_ROWS_MAX, page_token=request.query.get("after", "")
        )
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/prices")
    return render(
        request,
        "prices.html",
        status=status,
        prices=listed.prices,
        next_page=listed.next_page_token,
        form_error=form_error,
    )


async def set_price(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    try:
        price = forms.Price.read(form)
    except forms.FormError as error:
        return await prices(request, status=400, form_error=str(error))
    if form.get("step") != "apply":
        return _confirm(
            request,
            f"Set the price of agent {price.agent_id}?",
            [
                f"{charts.amount_text(price.price_micros)} per {price.unit or 'run'}",
                "debits accepted" if price.active else "debits refused (inactive)",
                "It replaces the agent's current price, if any.",
            ],
            "/prices",
            {k: form.get(k, "") for k in ("agent_id", "price", "unit", "active")},
            "/prices",
        )
    try:
        reply = await request.app[LEDGER].set_agent_price(
            price.agent_id, price.price_micros, unit=price.unit, active=price.active
        )
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/prices")
    security.session_of(request).notice = (
        f"Agent {reply.price.agent_id} now costs {format_credits(reply.price.price_micros)} "
        f"credits per {reply.price.unit}."
    )
    return security.see_other("/prices")


async def overview(request: web.Request) -> web.StreamResponse:
    ledger = request.app[LEDGER]
    try:
        stats = await ledger.get_stats()
        daily = await ledger.get_daily_totals(days=limits.CONSOLE_CHART_DAYS)
        report = await ledger.verify_ledger()
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/overview")
    days = usage.window(dt.date.fromisoformat(daily.end_date))
    index = {day.isoformat(): i for i, day in enumerate(days)}
    series = {name: [0] * len(days) for name in ("granted", "spent", "expired")}
    of_type = {
        common_pb2.TRANSACTION_TYPE_GRANT: "granted",
        common_pb2.TRANSACTION_TYPE_DEBIT: "spent",
        common_pb2.TRANSACTION_TYPE_EXPIRE: "expired",
    }
    for row in daily.totals:
        name = of_type.get(row.type)
        if name is not None and row.date in index:
            series[name][index[row.date]] += abs(row.amount_micros)
    return render(
        request,
        "overview.html",
        stats=stats,
        daily=daily,
        daily_chart=charts.grouped("Credits granted, spent and expired per day", days, series),
        report=report,
    )


async def webhooks(request: web.Request) -> web.StreamResponse:
    ledger = request.app[LEDGER]
    try:
        endpoints = await ledger.admin.ListWebhookEndpoints(
            events_pb2.ListWebhookEndpointsRequest(page_size=limits.CONSOLE_LIST_ROWS_MAX)
        )
        failures = []
        for endpoint in endpoints.endpoints:
            if endpoint.failed_deliveries:
                failed = await ledger.admin.ListEvents(
                    events_pb2.ListEventsRequest(
                        endpoint_id=endpoint.endpoint_id,
                        delivery_status="failed",
                        page_size=limits.CONSOLE_LIST_ROWS_MAX,
                    )
                )
                failures.append((endpoint.endpoint_id, failed.events))
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/webhooks")
    return render(request, "webhooks.html", endpoints=endpoints.endpoints, failures=failures)


async def replay_failed(request: web.Request) -> web.StreamResponse:
    """Every delivery an endpoint gave up on, queued again (ReplayEvents, failed_only)."""
    form = await form_of(request)
    endpoint_id = form.get("endpoint_id", "").strip()
    try:
        if form.get("step") != "apply":
            return _confirm(
                request,
                f"Deliver the given-up events to {endpoint_id} again?",
                [
                    "Every delivery to this endpoint that was given up is queued again, with a "
                    "new retry window; each account's events go in their order.",
                    "The receiver may see an event it already processed: it deduplicates by the "
                    "webhook-id, as for any retry.",
                ],
                "/webhooks/replay",
                {"endpoint_id": endpoint_id},
                "/webhooks",
            )
        request_id = _request_id(form)
    except forms.FormError as error:
        return refuse(request, 400, str(error))
    try:
        reply = await request.app[LEDGER].admin.ReplayEvents(
            events_pb2.ReplayEventsRequest(
                request_id=request_id, endpoint_id=endpoint_id, failed_only=True
            )
        )
    except CreditWalletError as error:
        return refused_by_ledger(request, error, "/webhooks")
    security.session_of(request).notice = (
        f"Queued {reply.queued} given-up deliveries to {endpoint_id} again"
        f"{' (replayed)' if reply.replayed else ''}."
    )
    return security.see_other("/webhooks")


async def home(request: web.Request) -> web.StreamResponse:
    return security.see_other("/accounts")


def ledger_client(config: ConsoleConfig) -> AsyncCreditWalletClient:
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return AsyncCreditWalletClient(
        config.ledger_target,
        config.admin_token.value,
        timeout_seconds=config.rpc_timeout_seconds,
        retries=0,
        tls=config.ledger_tls,
        root_certificates=read(config.ledger_tls_ca_path),
        private_key=read(config.ledger_tls_key_path),
        certificate_chain=read(config.ledger_tls_cert_path),
    )


def create_app(config: ConsoleConfig, sessions: SessionStore | None = None) -> web.Application:
    """The console's application; its ledger client opens with it and closes with it."""
    app = web.Application(
        client_max_size=limits.CONSOLE_FORM_BYTES_MAX,
        middlewares=[security.middleware(refuse)],
    )
    app[CONFIG] = config
    app[TEMPLATES] = templates()
    app[THROTTLE] = SignInThrottle()
    app[security.SESSIONS] = sessions if sessions is not None else SessionStore()
    app[security.SECURE] = config.secure_cookies
    app[security.COOKIE] = security.cookie_name(config.secure_cookies)

    async def ledger_context(app: web.Application) -> AsyncIterator[None]:
        app[LEDGER] = ledger_client(config)
        yield
        await app[LEDGER].close()

    app.cleanup_ctx.append(ledger_context)
    app.router.add_get("/", home)
    app.router.add_get("/sign-in", sign_in_page)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_get("/accounts", search)
    app.router.add_get("/accounts/{user_id}", account)
    app.router.add_post("/accounts/{user_id}/grant", grant)
    app.router.add_post("/accounts/{user_id}/reverse", reverse)
    app.router.add_post("/accounts/{user_id}/void", void)
    app.router.add_get("/prices", prices)
    app.router.add_post("/prices", set_price)
    app.router.add_get("/overview", overview)
    app.router.add_get("/webhooks", webhooks)
    app.router.add_post("/webhooks/replay", replay_failed)
    app.router.add_static("/static", HERE / "static", append_version=False)
    return app


@contextlib.asynccontextmanager
async def serving(config: ConsoleConfig) -> AsyncIterator[tuple[web.AppRunner, int]]:
    """The console listening on ``config``'s address: (runner, port)."""
    import ssl

    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    context = None
    if config.tls_cert_path is not None and config.tls_key_path is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert_path, config.tls_key_path)
    site = web.TCPSite(runner, config.host, config.port, ssl_context=context)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield runner, port
    finally:
        await runner.cleanup()
