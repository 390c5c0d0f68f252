"""The fast canonical encoding of entries is byte-for-byte the ``rfc8785`` package's."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.entry import encode

_scalars = (st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text()
            | st.floats(allow_nan=False, allow_infinity=False))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)


@settings(max_examples=400)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_encode_equals_rfc8785_for_any_json_object(entry: dict[str, object]) -> None:
    try:
        expected = bytes(rfc8785.dumps(entry))  # type: ignore[arg-type]
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):  # lone surrogates, big ints
        return
    assert encode(entry) == expected


def test_keys_outside_the_bmp_sort_by_utf16_code_units() -> None:
    entry = {"\U0001f600": 1, "\uff61": 2}  # code point order differs from UTF-16 order
    assert encode(entry) == bytes(rfc8785.dumps(entry))
    assert encode(entry).index("\uff61".encode()) > encode(entry).index("\U0001f600".encode())
