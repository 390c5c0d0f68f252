"""USCC check characters (GB 32100) and the generated county's codes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.demo.county import generate_county
from broker.domain.uscc import ALPHABET, is_valid_uscc, make_uscc, org_code_check_char


def test_org_code_check_follows_gb11714() -> None:
    # 11 - (sum of digits*weights mod 11); 10 -> X, 11 -> 0.
    assert org_code_check_char("00000000") == "0"
    assert org_code_check_char("12345678") == str(11 - (3 + 14 + 27 + 40 + 25 + 48 + 28 + 16)
                                                  % 11)


@given(st.text(alphabet="0123456789", min_size=8, max_size=8), st.integers(0, 17),
       st.sampled_from(ALPHABET))
def test_any_single_character_change_is_caught(body: str, position: int, char: str) -> None:
    code = make_uscc("330481", body)
    assert is_valid_uscc(code)
    changed = code[:position] + char + code[position + 1 :]
    assert is_valid_uscc(changed) == (changed == code)


def test_malformed_codes_are_invalid() -> None:
    assert not is_valid_uscc("")
    assert not is_valid_uscc("9133048106061781IT")  # I is not in the alphabet
    assert not is_valid_uscc("91330481060617811T0")


def test_the_county_is_seeded_valid_and_skewed() -> None:
    a, b = generate_county(), generate_county()
    assert a.monthly.equals(b.monthly)
    assert a.enterprises.equals(b.enterprises)
    assert all(is_valid_uscc(u) for u in a.enterprises["uscc"])
    assert a.enterprises["uscc"].is_unique
    top2 = a.enterprises.groupby(["industry", "town"])["annual_output"].apply(
        lambda s: s.nlargest(2).sum() / s.sum())
    # In every industry some town cell is dominated (two firms > 85%): the (2, 85) rule bites.
    assert (top2.groupby(level="industry").max() > 0.85).all()
    sizes = a.enterprises.groupby(["industry", "town"]).size()
    assert (sizes < 5).any()  # and some cells are small enough for the frequency rule
