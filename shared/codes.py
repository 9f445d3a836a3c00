"""Authentication codes as a person types them: ``4821 3907``, ``4821-3907``, ``48213907``.

The broker shows a code in two groups of four; the agent's ``enroll`` takes it however it
was copied, and the broker redeems it however it was sent. Both read it here.
"""

from __future__ import annotations

import re

CODE_DIGITS = 8
_SEPARATORS = re.compile(r"[\s-]+")


def normalise_code(typed: str) -> str | None:
    """The code's eight digits without spaces or hyphens; None unless exactly 8 digits."""
    digits = _SEPARATORS.sub("", typed)
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits
