"""Events out: the outbox's readers and writers outside the ledger's own statements.

The outbox itself is written by database triggers (migration 0007) in the transaction of
each ledger change. This package sequences committed events into one stream
(``sequencer``), delivers them as signed webhooks (``webhooks``), streams them over gRPC
(``stream``), notices lots about to expire (``expiring``), runs auto-recharge payments
(``recharge``) and serves the RPCs of all of it (``service``); ``workers`` runs the loops
inside the server process.
"""
