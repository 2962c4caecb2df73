"""``creditwallet-console``: the operators' console in the browser.

Its own process and listener (aiohttp), off unless started. It reads and changes the ledger
only over gRPC with the project's client and an admin token, like any other caller, and holds
no state of its own but the sessions of the people signed in (in memory, bounded in number
and lifetime). Pages are rendered on the server, charts included (SVG), and carry no script
at all: a Content-Security-Policy forbids every script, so an injected one cannot run.
"""
