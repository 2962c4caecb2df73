"""credit-wallet: a gRPC metering service that owns the credit ledger of AI agent usage.

One import root for everything the distribution installs:

- ``creditwallet.v1``: the API, generated from ``protos/creditwallet/v1/*.proto``;
- ``creditwallet.core``: what every process shares (limits, units, secrets, logging);
- ``creditwallet.client``: the Python clients and the ``creditwallet`` CLI (the plain install);
- ``creditwallet.server``: the gRPC server and its ledger (extra ``[server]``);
- ``creditwallet.gateway``: the Stripe webhook and cron gateway (extra ``[gateway]``).
"""

from importlib import metadata

try:
    __version__ = metadata.version("creditwallet")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
