"""Fault (c): callers whose deadline expires mid-debit, retrying with the same request_id.

The first attempt of each debit carries a deadline of a few milliseconds, about as long as a
debit takes, so it expires at every stage: before the server reads it, while the transaction
runs, during the commit, after it. The server finishes or rolls back on its own (shielded
from the cancellation); the retry, with a sane deadline, learns which: ``replayed`` means the
first attempt had committed.
"""

from __future__ import annotations

import random

from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.faults import load
from tests.faults.conftest import Scale
from tests.faults.serverproc import ServerProcess
from tests.harness import new_user

PREFIX = "deadline"
HASTY_TIMEOUTS_SECONDS = (0.001, 0.002, 0.004, 0.008, 0.016)


async def test_expired_deadlines_retry_with_same_request_id(
    server_proc: ServerProcess, scale: Scale, record: list[str]
) -> None:
    admin = load.client(server_proc.target)
    patient = load.client(server_proc.target, "agent")
    hasty = [
        load.client(server_proc.target, "agent", timeout_seconds=t) for t in HASTY_TIMEOUTS_SECONDS
    ]
    rng = random.Random(6)
    try:
        users = [new_user() for _ in range(scale.users)]
        await load.fund(admin, users, credits=1_000)
        ops = load.make_ops(PREFIX, users, scale.plan.ops)
        tally = load.Tally()

        def client_for(attempt: int) -> AsyncCreditWalletClient:
            return rng.choice(hasty) if attempt == 0 else patient

        await load.run_load(client_for, ops, scale.plan, tally)
        await load.resolve(admin, tally)
        result = await load.audit(server_proc.dsn, admin, PREFIX)
        load.check("deadline expired mid-debit", ops, tally, result, record)
        assert tally.codes["DEADLINE_EXCEEDED"] > 0
        assert tally.replayed > 0, "no deadline expired after a commit; the test proves less"
    finally:
        for client in (admin, patient, *hasty):
            await client.close()
    load.assert_no_secrets(server_proc.log_text(), "the server's log")
