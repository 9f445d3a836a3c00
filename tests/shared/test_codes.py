"""The Damm check digit: known vectors, and every typo it promises to catch, caught."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.enroll import CodeFormatError, normalise_code
from shared.codes import damm_check_digit, has_valid_check_digit, with_check_digit

BODIES = st.integers(min_value=0, max_value=10**7 - 1).map(lambda n: f"{n:07d}")


@pytest.mark.parametrize(
    ("digits", "check"),
    [
        ("572", "4"),  # the worked example of Damm's algorithm
        ("0", "0"),
        ("1", "3"),
        ("5724", "0"),  # a number that ends in its check digit checks to 0
        ("4821390", "7"),  # the docs' example code, 4821 3907, is a valid code
    ],
)
def test_known_check_digits(digits: str, check: str) -> None:
    assert damm_check_digit(digits) == check


@pytest.mark.parametrize("digits", ["12a", "١٢٣", "1 2", "-1"])
def test_only_ascii_digits_have_a_check_digit(digits: str) -> None:
    with pytest.raises(ValueError, match="decimal digits"):
        damm_check_digit(digits)


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("48213907", True),
        ("00000000", True),
        ("48213970", False),  # the last two digits swapped
        ("48213906", False),  # the last digit wrong
        ("4821390", False),  # seven digits
        ("482139070", False),  # nine
        ("４８２１３９０７", False),  # full-width digits are not ASCII
    ],
)
def test_valid_codes(code: str, valid: bool) -> None:
    assert has_valid_check_digit(code) is valid


@given(BODIES)
def test_a_made_code_checks(body: str) -> None:
    code = with_check_digit(body)
    assert len(code) == 8 and code[:7] == body and has_valid_check_digit(code)
    assert sum(has_valid_check_digit(body + d) for d in "0123456789") == 1


@given(BODIES)
def test_every_single_wrong_digit_is_caught(body: str) -> None:
    code = with_check_digit(body)
    for i, right in enumerate(code):
        for wrong in "0123456789":
            if wrong != right:
                assert not has_valid_check_digit(code[:i] + wrong + code[i + 1 :]), (code, i, wrong)


@given(BODIES)
def test_every_swap_of_two_neighbours_is_caught(body: str) -> None:
    code = with_check_digit(body)
    for i in range(len(code) - 1):
        if code[i] != code[i + 1]:
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
            assert not has_valid_check_digit(swapped), (code, i)


@pytest.mark.parametrize("typed", ["4821 3970", "4821 3906", "8421 3907", "4821-3917"])
def test_the_agent_refuses_a_mistyped_code_in_the_technicians_words(typed: str) -> None:
    grouped = typed.replace("-", " ")
    with pytest.raises(CodeFormatError) as caught:
        normalise_code([typed])
    assert str(caught.value) == f"the code {grouped} is not valid: check the digits and type it again"
