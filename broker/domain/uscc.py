"""Unified social credit codes (GB 32100-2015) and the embedded organisation code (GB 11714).

An 18-character code: registration authority (1), organisation category (1), administrative
division (6), organisation code (9, its last character a GB 11714 check), and a check
character computed modulo 31 over the first 17 with weights 3^i mod 31.
"""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_WEIGHTS = [pow(3, i, 31) for i in range(17)]
_ORG_WEIGHTS = [3, 7, 9, 10, 5, 8, 4, 2]


def uscc_check_char(first17: str) -> str:
    """The 18th character for the first seventeen."""
    total = sum(_VALUE[c] * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def org_code_check_char(first8: str) -> str:
    """GB 11714 check character of an 8-character organisation code body (digits/letters)."""
    values = [int(c) if c.isdigit() else ord(c) - ord("A") + 10 for c in first8]
    check = 11 - sum(v * w for v, w in zip(values, _ORG_WEIGHTS, strict=True)) % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def is_valid_uscc(code: str) -> bool:
    """Whether ``code`` is an 18-character USCC with a correct check character."""
    if len(code) != 18 or any(c not in _VALUE for c in code):
        return False
    return uscc_check_char(code[:17]) == code[17]


def make_uscc(division: str, org_body: str, *, authority: str = "9", category: str = "1") -> str:
    """A valid USCC from its parts (for synthetic data)."""
    org = org_body + org_code_check_char(org_body)
    first17 = authority + category + division + org
    return first17 + uscc_check_char(first17)
