"""Credits <-> micros: exact both ways, refusals for what is not a credit amount."""

from __future__ import annotations

import pytest
from creditwallet.core.units import INT64_MAX, format_credits, parse_credits
from hypothesis import given
from hypothesis import strategies as st

# --- credits <-> micros ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("1.5", 1_500_000),
        ("0.1", 100_000),
        ("0.000001", 1),
        ("2.50", 2_500_000),
        ("123456789.123456", 123_456_789_123_456),
        ("9223372036854.775807", INT64_MAX),
    ],
)
def test_parse_credits_is_exact(text: str, micros: int) -> None:
    parsed = parse_credits(text)
    assert parsed == micros
    assert type(parsed) is int


@pytest.mark.parametrize(
    "text",
    [
        "1.0000001",  # seven decimals: refused, never rounded
        "0.0000005",
        "9223372036854.775808",  # one micro beyond int64
        "99999999999999999999",
        "-1",
        "+1",
        "1e3",
        "NaN",
        "Infinity",
        "",
        ".5",
        "1.",
        " 1",
        "1_000",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to us
    ],
)
def test_parse_credits_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"credits|int64"):
        parse_credits(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (2_500_000, "2.5"),
        (0, "0"),
        (1, "0.000001"),
        (10_000_000, "10"),
        (1_230_000, "1.23"),
        (-1_500_000, "-1.5"),
        (INT64_MAX, "9223372036854.775807"),
    ],
)
def test_format_credits_strips_trailing_zeros(micros: int, text: str) -> None:
    assert format_credits(micros) == text


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_credits_round_trip_exactly(micros: int) -> None:
    assert parse_credits(format_credits(micros)) == micros
