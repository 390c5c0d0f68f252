"""UTS #39 skeletons and the mixed-script rule."""

from __future__ import annotations

import pytest

from broker.domain.confusables import confusable_groups_by, is_mixed_script, skeleton


@pytest.mark.parametrize(("a", "b"), [
    ("town", "t\u043ewn"),          # Cyrillic o
    ("paypal", "p\u0430ypal"),      # Cyrillic a
    ("O", "0"),
    ("l", "1"),
    ("\u01c6", "d\u017e"),          # the ligature dz-caron and its letters
    ("name", "\U0001d427ame"),      # mathematical bold n
])
def test_confusable_strings_share_a_skeleton(a: str, b: str) -> None:
    assert skeleton(a) == skeleton(b)


@pytest.mark.parametrize(("a", "b"), [("town", "gown"), ("energy", "\u00e8nergy"),
                                      ("kwh", "kWh_1")])
def test_distinct_strings_keep_distinct_skeletons(a: str, b: str) -> None:
    assert skeleton(a) != skeleton(b)


@pytest.mark.parametrize(("name", "mixed"), [
    ("t\u043ewn", True), ("\u03c0o", True), ("town_1", False), ("GDP增速", False),
    ("ひらがなカタカナ漢字", False), ("한국어abc", False), ("город", False), ("x\u0303", False),
])
def test_highly_restrictive_scripts(name: str, mixed: bool) -> None:
    assert is_mixed_script(name) is mixed


def test_groups_name_every_lookalike_once() -> None:
    assert confusable_groups_by(["town", "t\u043ewn", "kwh", "TOWN"]) == [["town", "t\u043ewn"]]
    assert confusable_groups_by(["town", "TOWN"], str.casefold) == [["TOWN", "town"]]
