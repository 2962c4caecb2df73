"""The API's buf and AIP style rules, checked over the compiled descriptors (no buf on PyPI)."""

from __future__ import annotations

from creditwallet.v1 import (
    admin_service_pb2,
    billing_service_pb2,
    common_pb2,
    events_pb2,
    wallet_service_pb2,
)
from google.protobuf import descriptor

FILES = [common_pb2, events_pb2, wallet_service_pb2, billing_service_pb2, admin_service_pb2]
# Writes whose effect is a pure "set" keyed by what they name; no request_id needed.
NATURALLY_IDEMPOTENT = {
    "EnsureAccount",
    "SetAgentPrice",
    "SetOverdraftLimit",
    "GetReferralCode",
    "Rollover",
    "SetBalanceAlert",
    "SetAutoRecharge",
    "SetMember",
}
READS = {
    "GetBalance",
    "ListTransactions",
    "GetStreak",
    "ListAgentPrices",
    "GetStats",
    "VerifyLedger",
    "StreamEvents",
    "ListEvents",
    "ListWebhookEndpoints",
    "GetRolloverProgress",
    "GetUsage",
    "ListMembers",
    "ListHolds",
    "GetDailyTotals",
}
# Batches: each item is a request with its own request_id.
BATCHES = {"BatchDebit": "requests"}


def methods() -> list[descriptor.MethodDescriptor]:
    return [m for f in FILES for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods]


def test_package_mirrors_directory() -> None:
    for f in FILES:
        assert f.DESCRIPTOR.package == "creditwallet.v1"
        assert f.DESCRIPTOR.name.startswith("creditwallet/v1/")


def test_services_end_in_service_and_messages_are_per_rpc() -> None:
    for f in FILES:
        for service in f.DESCRIPTOR.services_by_name.values():
            assert service.name.endswith("Service")
    for m in methods():
        assert m.input_type.name == f"{m.name}Request"
        assert m.output_type.name == f"{m.name}Response"


def test_enums_have_prefixed_values_and_unspecified_zero() -> None:
    for f in FILES:
        for enum in f.DESCRIPTOR.enum_types_by_name.values():
            prefix = "".join("_" + c if c.isupper() else c.upper() for c in enum.name)[1:]
            assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"
            for value in enum.values:
                assert value.name.startswith(prefix + "_"), value.name
        for message in f.DESCRIPTOR.message_types_by_name.values():
            assert not message.enum_types, f"nested enum in {message.name}"


def test_mutating_requests_take_request_id_and_lists_page() -> None:
    for m in methods():
        fields = m.input_type.fields_by_name
        if m.name in BATCHES:
            items = fields[BATCHES[m.name]]
            assert items.is_repeated
            assert items.message_type is not None
            assert "request_id" in items.message_type.fields_by_name
        elif m.name in READS or m.name in NATURALLY_IDEMPOTENT:
            assert "request_id" not in fields or m.name not in READS
        else:
            assert "request_id" in fields, m.name
        if m.name.startswith("List"):
            assert {"page_size", "page_token"} <= set(fields), m.name
            assert "next_page_token" in m.output_type.fields_by_name


def test_amounts_are_int64_micros_and_no_unsigned_or_floats() -> None:
    banned = {
        descriptor.FieldDescriptor.TYPE_UINT32,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_FLOAT,
        descriptor.FieldDescriptor.TYPE_DOUBLE,
    }
    for f in FILES:
        for message in f.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                assert field.type not in banned, f"{message.name}.{field.name}"
                if field.name.endswith("_micros"):
                    assert field.type == descriptor.FieldDescriptor.TYPE_INT64
