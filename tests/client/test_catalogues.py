"""What is named once stays named once: reasons, enum names, and who may import what.

- Every refusal reason is in ``creditwallet.core.reasons``; the server can raise only those
  (``LedgerError`` refuses any other), and the client maps each one to its own exception
  class, whose place in the hierarchy matches the reason's gRPC code.
- Every value of the protobuf enums has its ledger name and back (``top_up`` is
  ``LOT_SOURCE_TOP_UP``), so no table of names is written twice.
- The ledger speaks no gRPC and no protobuf: no module under ``server/ledger`` imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import grpc
import pytest
from creditwallet.client import errors as client_errors
from creditwallet.core import reasons
from creditwallet.server import convert, errors
from creditwallet.server.ledger import types
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from google.rpc import status_pb2

REPO = Path(__file__).resolve().parents[2]

_CLASS_OF_CODE = {
    reasons.INVALID_ARGUMENT: client_errors.InvalidArgument,
    reasons.NOT_FOUND: client_errors.NotFound,
    reasons.FAILED_PRECONDITION: client_errors.FailedPrecondition,
    reasons.ALREADY_EXISTS: client_errors.RequestIdReused,
    reasons.UNAUTHENTICATED: client_errors.Unauthenticated,
    reasons.PERMISSION_DENIED: client_errors.PermissionDenied,
    reasons.UNAVAILABLE: client_errors.Unavailable,
    reasons.INTERNAL: client_errors.Internal,
    reasons.RESOURCE_EXHAUSTED: client_errors.ResourceExhausted,
}


def test_the_client_has_a_class_for_every_reason_and_no_other() -> None:
    assert set(client_errors.BY_REASON) == set(reasons.BY_NAME)
    for name, reason in reasons.BY_NAME.items():
        cls = client_errors.BY_REASON[name]
        assert issubclass(cls, _CLASS_OF_CODE[reason.code]), name
        assert grpc.StatusCode[reason.code]  # a real gRPC code


def test_every_reason_survives_the_wire_as_its_class() -> None:
    """The server's status for each reason decodes, on the client, to that reason's class."""
    from creditwallet.server import status

    class Call(grpc.RpcError):
        """What a failed call looks like to the client: a code, details and trailers."""

        def __init__(self, code: str, rich: status_pb2.Status) -> None:
            self._code, self._rich = code, rich

        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode[self._code]

        def details(self) -> str:
            return str(self._rich.message)

        def trailing_metadata(self) -> Any:
            return (("grpc-status-details-bin", self._rich.SerializeToString()),)

    for name, reason in reasons.BY_NAME.items():
        metadata = {key: "7" for key in reason.metadata}
        refusal = errors.LedgerError(name, f"a {name}", metadata)
        decoded = client_errors.from_rpc_error(Call(reason.code, status.to_status(refusal)))
        assert type(decoded) is client_errors.BY_REASON[name], name
        assert decoded.reason == name
        assert decoded.metadata == metadata


def test_a_reason_outside_the_catalogue_cannot_be_raised() -> None:
    with pytest.raises(ValueError, match="catalogue"):
        errors.LedgerError("MADE_UP", "nope")
    with pytest.raises(ValueError, match="NOT_FOUND"):
        errors.precondition("ACCOUNT_NOT_FOUND", "wrong code for the reason")


@pytest.mark.parametrize(
    ("enum", "prefix", "names"),
    [
        (pb.LotSource, "LOT_SOURCE_", types.LOT_SOURCES),
        (pb.TransactionType, "TRANSACTION_TYPE_", types.TRANSACTION_TYPES),
        (pb.SubscriptionStatus, "SUBSCRIPTION_STATUS_", types.SUBSCRIPTION_STATUSES),
        (apb.MemberCapPeriod, "MEMBER_CAP_PERIOD_", types.MEMBER_CAP_PERIODS),
    ],
)
def test_every_proto_enum_value_has_its_ledger_name(
    enum: object, prefix: str, names: tuple[str, ...]
) -> None:
    values = {n for n in enum.keys() if n != prefix + "UNSPECIFIED"}  # type: ignore[attr-defined]  # noqa: SIM118
    ledger = {prefix + name.upper() for name in names if name != "unspecified"}
    assert values == ledger


def test_the_converters_cover_every_name() -> None:
    assert set(convert.SOURCE_TO_PB) == set(types.LOT_SOURCES)
    assert set(convert.TYPE_TO_PB) == set(types.TRANSACTION_TYPES)
    assert set(convert.STATUS_TO_PB) == set(types.SUBSCRIPTION_STATUSES)
    assert set(convert.PERIOD_TO_PB) == set(types.MEMBER_CAP_PERIODS)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_ledger_speaks_no_grpc_and_no_protobuf() -> None:
    for path in (REPO / "server" / "ledger").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            assert top not in ("grpc", "google", "grpc_status"), (path.name, module)
            assert not module.startswith("creditwallet.v1"), (path.name, module)
