"""credit-wallet's gRPC server: the only writer of the credit ledger."""
