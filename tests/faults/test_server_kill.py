"""Fault (a): ``kill -9`` the server mid-load, restart it, and lose nothing.

Debits in flight when the process dies either committed or did not; the callers cannot tell,
so they send the same request_id again once the server is back. Afterwards every
acknowledged debit is in the ledger once, with the transaction_id its caller was given.
"""

from __future__ import annotations

import asyncio

from tests.faults import load
from tests.faults.conftest import Scale
from tests.faults.serverproc import ServerProcess
from tests.harness import new_user

PREFIX = "kill9"


async def test_kill_9_mid_load_then_restart(
    server_proc: ServerProcess, scale: Scale, record: list[str]
) -> None:
    admin = load.client(server_proc.target)
    agent = load.client(server_proc.target, "agent")
    try:
        users = [new_user() for _ in range(scale.users)]
        await load.fund(admin, users, credits=1_000)
        ops = load.make_ops(PREFIX, users, scale.plan.ops)
        tally = load.Tally()
        pid_before = server_proc.pid

        async def fault() -> None:
            await load.when_acknowledged(tally, len(ops) // 3)
            server_proc.kill()
            await asyncio.sleep(0.2)  # let callers meet the dead port
            server_proc.start()
            await server_proc.wait_serving()

        await load.with_fault(load.run_load(lambda attempt: agent, ops, scale.plan, tally), fault())
        assert server_proc.pid != pid_before
        assert server_proc.starts == 2
        await load.resolve(admin, tally)
        result = await load.audit(server_proc.dsn, admin, PREFIX)
        load.check("kill -9 server", ops, tally, result, record)
        assert tally.codes["UNAVAILABLE"] > 0, "the fault never reached a caller"
    finally:
        await admin.close()
        await agent.close()
    load.assert_no_secrets(server_proc.log_text(), "the server's log")
