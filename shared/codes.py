"""Authentication codes as a person types them: ``4821 3907``, ``4821-3907``, ``48213907``.

The broker shows a code in two groups of four; the agent's ``enroll`` takes it however it
was copied, and the broker redeems it however it was sent. Both read it here.

The eighth digit is a Damm check digit over the first seven (H. M. Damm, 2004): with the
quasigroup below, every single wrong digit and every swap of two neighbouring digits
changes the check, so the agent refuses such a typo on the host before anything is sent.
Seven free digits leave 10^7 codes; docs/design.md ("Authentication code") weighs that.
"""

from __future__ import annotations

import re

CODE_DIGITS = 8
_SEPARATORS = re.compile(r"[\s-]+")

# The weakly totally anti-symmetric quasigroup of order 10 that Damm published and every
# implementation uses: row = interim digit, column = next digit of the number.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def _interim(digits: str) -> int:
    interim = 0
    for d in digits:
        interim = _DAMM[interim][ord(d) - ord("0")]
    return interim


def damm_check_digit(digits: str) -> str:
    """The Damm check digit of ``digits`` (ASCII digits only), e.g. ``"572"`` → ``"4"``."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("Damm check digits are defined over decimal digits only")
    return str(_interim(digits))


def has_valid_check_digit(code: str) -> bool:
    """True when ``code`` (8 ASCII digits, as ``normalise_code`` returns) ends in its check digit."""
    return len(code) == CODE_DIGITS and code.isascii() and code.isdigit() and _interim(code) == 0


def with_check_digit(body: str) -> str:
    """The first seven digits of a code followed by their check digit."""
    if len(body) != CODE_DIGITS - 1:
        raise ValueError(f"a code body is {CODE_DIGITS - 1} digits")
    return body + damm_check_digit(body)


def normalise_code(typed: str) -> str | None:
    """The code's eight digits without spaces or hyphens; None unless exactly 8 digits.

    The check digit is not checked here: the broker still redeems codes made before codes
    carried one (see ``broker.codes.redeem``); the agent checks it with
    ``has_valid_check_digit``.
    """
    digits = _SEPARATORS.sub("", typed)
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits
