"""Webhook delivery and StreamEvents against a real server and a real receiving server.

Signatures are checked by the receiver with the Standard Webhooks reference verifier; a
receiver that is down gets everything, in order per account, once it is back (retries are
due by the ledger's clock, which the test moves); two servers on one database never send
one event at once; a stream resumed from its last cursor sees every event once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests.events_kit import Receiver
from tests.harness import new_user

CREDIT = 1_000_000


async def activity(admin: AsyncCreditWalletClient, users: list[str], debits: int) -> None:
    for user in users:
        await admin.ensure_account(user)
    await asyncio.gather(
        *(admin.debit(u, amount_micros=CREDIT // 100) for u in users for _ in range(debits))
    )


async def all_events(dsn: str, users: list[str]) -> dict[str, list[str]]:
    return {u: [e["event_id"] for e in await events_kit.events_of(dsn, u)] for u in users}


def in_order(receiver: Receiver, expected: dict[str, list[str]]) -> None:
    """Each account's events arrived first in sequence order, each one at least once."""
    unique = receiver.unique()
    assert set(unique) == {e for ids in expected.values() for e in ids}
    firsts: dict[str, list[int]] = {}
    for delivery in receiver.acknowledged():
        if unique[delivery.webhook_id] is delivery:
            firsts.setdefault(delivery.body["user_id"], []).append(delivery.body["sequence"])
    for user, ids in expected.items():
        assert firsts[user] == list(range(1, len(ids) + 1)), user


async def test_signed_deliveries_survive_a_receiver_outage_in_order(
    base_dsn: str, data_dir: Path, receiver: Receiver
) -> None:
    ledger = await events_kit.start(
        base_dsn,
        data_dir,
        endpoints=(events_kit.endpoint("warehouse", receiver.url, receiver.secret),),
    )
    admin = ledger.client("admin")
    try:
        users = [new_user() for _ in range(3)]
        receiver.up = False
        await activity(admin, users, debits=5)
        expected = await all_events(ledger.dsn, users)

        async def failing() -> bool:
            page = await admin.admin.ListWebhookEndpoints(epb.ListWebhookEndpointsRequest())
            [state] = page.endpoints
            return state.consecutive_failures >= len(users) and state.pending_deliveries == sum(
                len(v) for v in expected.values()
            )

        await events_kit.wait_for(failing, "the endpoint records its failures")
        page = await admin.admin.ListWebhookEndpoints(epb.ListWebhookEndpointsRequest())
        [state] = page.endpoints
        assert state.failing_since.seconds > 0
        assert "HTTP 503" in state.last_error
        assert state.pending_deliveries == sum(len(v) for v in expected.values())
        # Nothing but each lane's head was tried: order per account holds while down.
        assert {d.body["sequence"] for d in receiver.deliveries} == {1}
        receiver.up = True
        ledger.clock.advance(seconds=5)
        await asyncio.sleep(events_kit.POLL_SECONDS * 5)
        assert not receiver.acknowledged(), "retries wait for their time (10 s after one failure)"
        ledger.clock.advance(seconds=10)

        async def all_delivered() -> bool:
            return len(receiver.unique()) == sum(len(v) for v in expected.values())

        await events_kit.wait_for(all_delivered, "everything delivered once the receiver is back")
        in_order(receiver, expected)
        assert receiver.bad_signatures == 0
        assert len(receiver.acknowledged()) == len(receiver.unique()), "no duplicate"
        page = await admin.admin.ListWebhookEndpoints(epb.ListWebhookEndpointsRequest())
        assert page.endpoints[0].consecutive_failures == 0
        body = receiver.acknowledged()[0].body
        assert set(body) == {"id", "type", "timestamp", "user_id", "sequence", "cursor", "data"}
    finally:
        await ledger.close()


async def test_given_up_after_three_days_then_replayed(
    base_dsn: str, data_dir: Path, receiver: Receiver
) -> None:
    ledger = await events_kit.start(
        base_dsn,
        data_dir,
        endpoints=(
            events_kit.endpoint("crm", receiver.url, receiver.secret, ("credits.debited",)),
        ),
    )
    admin = ledger.client("admin")
    try:
        user = new_user()
        receiver.up = False
        await activity(admin, [user], debits=2)
        await events_kit.give_up(ledger, receiver, "crm", user, 2)
        failed = epb.ListEventsRequest(user_id=user, endpoint_id="crm", delivery_status="failed")
        listed = await admin.admin.ListEvents(failed)
        assert {e.type for e in listed.events} == {"credits.debited"}
        assert listed.events[0].deliveries[0].attempts > 10
        receiver.up = True
        # The operator's commands: the failure state, the failed events, and the replay.
        assert await harness.cli(ledger, "events", "endpoints") == 0
        assert (
            await harness.cli(
                ledger, "events", "list", "--endpoint", "crm", "--status", "failed", "--user", user
            )
            == 0
        )
        assert (
            await harness.cli(
                ledger, "events", "replay", "crm", "--failed", "--request-id", "replay-1"
            )
            == 0
        )
        replay = epb.ReplayEventsRequest(request_id="replay-1", endpoint_id="crm", failed_only=True)
        again = await admin.admin.ReplayEvents(replay)
        assert (again.replayed, again.queued) == (True, 2), "one replay per request_id"

        async def delivered() -> bool:
            return len(receiver.unique()) == 2

        await events_kit.wait_for(delivered, "replayed deliveries arrive")
        assert [d.body["type"] for d in receiver.acknowledged()] == ["credits.debited"] * 2
        with pytest.raises(cw.CreditWalletError) as refused:
            await admin.admin.ReplayEvents(
                epb.ReplayEventsRequest(request_id="replay-2", endpoint_id="nope", failed_only=True)
            )
        assert refused.value.reason == "ENDPOINT_NOT_FOUND"
    finally:
        await ledger.close()


async def test_two_replicas_never_deliver_one_event_at_once(
    base_dsn: str, data_dir: Path, receiver: Receiver
) -> None:
    endpoints = (events_kit.endpoint("warehouse", receiver.url, receiver.secret),)
    first = await events_kit.start(base_dsn, data_dir, endpoints=endpoints)
    second = await events_kit.start(
        base_dsn, data_dir, endpoints=endpoints, dsn=first.dsn, clock=first.clock
    )
    admin = first.client("admin")
    try:
        receiver.delay_seconds = 0.01  # widen the window in which a second sender would overlap
        users = [new_user() for _ in range(6)]
        await activity(admin, users, debits=4)
        expected = await all_events(first.dsn, users)

        async def all_delivered() -> bool:
            return len(receiver.unique()) == sum(len(v) for v in expected.values())

        await events_kit.wait_for(all_delivered, "everything delivered by the two replicas")
        assert receiver.overlaps == [], "an event was in flight twice"
        assert len(receiver.acknowledged()) == len(receiver.unique()), "none sent twice"
        in_order(receiver, expected)
    finally:
        await second.close()
        await first.close()


async def test_stream_resumed_from_a_cursor_sees_every_event_once(
    base_dsn: str, data_dir: Path
) -> None:
    ledger = await events_kit.start(base_dsn, data_dir)
    admin = ledger.client("admin")
    agent = ledger.client("agent")
    try:
        users = [new_user() for _ in range(4)]
        await activity(admin, users, debits=3)
        seen: list[epb.Event] = []
        cursor = ""

        async def read(count: int) -> None:
            nonlocal cursor
            async for event in agent.stream_events(cursor):
                seen.append(event)
                cursor = event.cursor
                if len(seen) >= count:
                    return  # disconnects: the call is cancelled

        await asyncio.wait_for(read(10), events_kit.WAIT_SECONDS)
        # While disconnected, more changes commit, concurrently.
        await asyncio.gather(
            activity(admin, users, debits=3),
            admin.grant(users[0], CREDIT, pb.LOT_SOURCE_PROMO),
        )
        expected = sum(len(v) for v in (await all_events(ledger.dsn, users)).values())
        await asyncio.wait_for(read(expected), events_kit.WAIT_SECONDS)
        ids = [e.event_id for e in seen]
        assert len(ids) == len(set(ids)) == expected
        assert [int(e.cursor) for e in seen] == sorted(int(e.cursor) for e in seen)
        for user in users:
            assert [e.sequence for e in seen if e.user_id == user] == list(
                range(1, sum(1 for e in seen if e.user_id == user) + 1)
            )
        # Filters: one account, one type.
        only: list[epb.Event] = []
        async for event in agent.stream_events("", types=["credits.granted"], user_id=users[0]):
            only.append(event)
            if len(only) == 2:
                break
        assert [(e.user_id, e.type) for e in only] == [(users[0], "credits.granted")] * 2
    finally:
        await ledger.close()


async def first_of(stream: AsyncIterator[epb.Event]) -> epb.Event | None:
    async for event in stream:
        return event
    return None


async def test_stream_refuses_no_token_and_bad_input(ledger: harness.Ledger) -> None:
    anonymous = AsyncCreditWalletClient(ledger.target, "not-a-token", retries=0)
    try:
        with pytest.raises(cw.CreditWalletError) as refused:
            await first_of(anonymous.stream_events())
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await anonymous.close()
    agent = ledger.client("agent")
    for kwargs, field in (
        ({"after_cursor": "x1"}, "after_cursor"),
        ({"types": ["credits.nope"]}, "types"),
        ({"user_id": "bad user"}, "user_id"),
    ):
        with pytest.raises(cw.CreditWalletError) as invalid:
            await first_of(agent.stream_events(**kwargs))  # type: ignore[arg-type]
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT, field
