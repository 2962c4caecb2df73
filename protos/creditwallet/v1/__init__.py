"""The credit-wallet API, generated from the .proto files beside this package (make proto)."""
