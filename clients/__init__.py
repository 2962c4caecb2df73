"""Python clients of the credit-wallet gRPC API, and the ``creditwallet`` operator CLI.

Why a package of its own: agent runtimes, the webhook gateway and operators all talk to the
ledger, and each should get the same guarantees without re-deriving them — a deadline on every
call, retries only of ``UNAVAILABLE`` and only with the same ``request_id``, typed exceptions
carrying the server's ``ErrorInfo`` reason and metadata, and exact integer micro-credits.

- ``clients.wallet``: ``AsyncCreditWalletClient`` (grpc.aio) and ``CreditWalletClient`` (sync).
- ``clients.errors``: the exception hierarchy and ``from_rpc_error``.
- ``clients.cli``: the ``creditwallet`` console script (grammar in ``clients.arguments``,
  views in ``clients.render``, local webhooks in ``clients.devhooks``).

How a keyword call becomes an RPC: ``clients.builders`` builds the request message,
``clients.binding`` binds each builder to its entry of ``clients.rpc_table`` (the table of
every RPC, with the call policy), and ``clients.raw`` gives the same RPCs as raw methods, one
namespace per service (``client.wallet.Debit(request)``).

Credits <-> micros, exactly, is ``creditwallet.core.units``.
"""

from creditwallet.client.errors import CreditWalletError, from_rpc_error
from creditwallet.client.wallet import AsyncCreditWalletClient, CreditWalletClient

__all__ = [
    "AsyncCreditWalletClient",
    "CreditWalletClient",
    "CreditWalletError",
    "from_rpc_error",
]
