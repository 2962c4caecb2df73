"""The credit ledger: plain async functions over one asyncpg connection inside a transaction.

Where things are:
- ``debit.py``: the hot path (Debit RPC): lock account, sweep expiries, price, burn lots down.
- ``lots.py``: the lot primitives every feature is built from: grant, consume, give back, expire.
- ``accounts.py``: the account row (the lock every writer of an account takes first).
- ``holds.py``: Authorize / Capture / Void.  ``reversals.py``: ReverseDebit.
- ``idempotency.py``: request_id claim, replay and refusal storage, in the caller's transaction.
- ``history.py``: ListTransactions; ``pricing.py``; ``stats.py``; ``verify.py`` (the invariants).

Every function takes ``now`` from the injected clock; none calls ``now()`` in SQL.
"""
