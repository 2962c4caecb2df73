"""Credits as people write them <-> micro-credits as the wire carries them, exactly.

Why a module: amounts are money. The API carries integer micros (1 credit = 1,000,000); people
type and read decimal credits. The conversion goes through ``decimal.Decimal`` and integer
arithmetic only, so "0.1" is exactly 100,000 micros and 2,500,000 micros print as "2.5" — a
float would turn some of them into 99,999. Input with more than six decimals is refused rather
than rounded: a silent rounding of an operator's grant is a ledger error.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from typing import Final

MICROS_PER_CREDIT: Final = 1_000_000
CREDIT_DECIMALS_MAX: Final = 6
INT64_MAX: Final = 2**63 - 1

# Plain ASCII digits with an optional fraction: no sign, exponent, underscore, NaN or infinity.
# 19 integer digits already exceed int64 micros, so longer input is refused before any
# arithmetic (and the Decimal context below then never needs to round).
_INTEGER_DIGITS_MAX: Final = 19
_CREDITS_TEXT: Final = re.compile(rf"([0-9]{{1,{_INTEGER_DIGITS_MAX}}})(?:\.([0-9]+))?")
_DECIMAL_PRECISION_DIGITS: Final = 50


def parse_credits(text: str) -> int:
    """Returns the micros of a non-negative decimal number of credits, e.g. "1.5" -> 1500000.

    Raises ``ValueError`` for anything that is not plain decimal digits, for more than six
    decimals, and for amounts beyond int64 micros.
    """
    match = _CREDITS_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"not a plain non-negative decimal number of credits: {text!r}")
    fraction = match.group(2)
    if fraction is not None and len(fraction) > CREDIT_DECIMALS_MAX:
        raise ValueError(
            f"credits have at most {CREDIT_DECIMALS_MAX} decimals (1 micro-credit): {text!r}"
        )
    with localcontext() as context:
        context.prec = _DECIMAL_PRECISION_DIGITS
        micros_decimal = Decimal(text).scaleb(CREDIT_DECIMALS_MAX)
    micros = int(micros_decimal)
    assert micros == micros_decimal, "six decimals always scale to a whole number of micros"
    if micros > INT64_MAX:
        raise ValueError(f"amount does not fit in int64 micros: {text!r}")
    return micros


def format_credits(micros: int) -> str:
    """Returns micros as exact decimal credits without trailing zeros: 2500000 -> "2.5"."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_CREDIT)
    if fraction == 0:
        return f"{sign}{whole}"
    digits = str(fraction).rjust(CREDIT_DECIMALS_MAX, "0").rstrip("0")
    return f"{sign}{whole}.{digits}"
