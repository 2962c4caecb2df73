"""The one JSON form of API messages, shared by the CLI's ``--json`` and the gateway's answers.

Why the protobuf JSON mapping (``google.protobuf.json_format``) rather than a form of our own:
it is what every gRPC tool speaks (grpcurl prints it, gateways accept it), so a script written
against one of our outputs reads the others. Its rules: field names in lowerCamelCase
(``availableMicros``), 64-bit integers as decimal strings (``"2500000"``: JavaScript numbers
lose precision beyond 2**53, and these are money), enums by name, timestamps in RFC 3339.
Every field is printed, defaults included (``"replayed": false`` is never missing), except
unset message fields and unset ``optional`` scalars.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def to_json(message: Message) -> str:
    return json.dumps(to_dict(message), indent=2, ensure_ascii=False)
