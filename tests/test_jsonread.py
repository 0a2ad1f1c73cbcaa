"""proxy.jsonread: orjson's speed, json's results."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.jsonread import loads

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(_INT64_MIN, _UINT64_MAX)  # past these, see the last test
    | st.floats(allow_nan=False)  # Infinity included: orjson refuses it, json reads it
    | st.text(),  # lone surrogates included
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON, st.booleans())
def test_every_document_reads_as_json_reads_it(value: object, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass")
    for data in (text, raw, bytearray(raw)):
        try:
            expected = json.loads(data)
        except ValueError:  # a raw lone surrogate is not UTF-8: json refuses it too
            with pytest.raises(ValueError):
                loads(data)
        else:
            assert loads(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"n": NaN}', "nan", id="nan"),
        pytest.param(b'{"n": Infinity}', math.inf, id="infinity"),
        pytest.param(b'{"s": "\\ud800"}', "\ud800", id="lone-surrogate-escape"),
        pytest.param(b'\xef\xbb\xbf{"n": 1}', 1, id="utf-8-bom"),
        pytest.param('{"n": 1}'.encode("utf-16"), 1, id="utf-16"),
    ],
)
def test_what_orjson_refuses_is_read_by_json(data: bytes, expected: object) -> None:
    document = loads(data)
    assert isinstance(document, dict)
    (value,) = document.values()
    if expected == "nan":
        assert math.isnan(value)
    else:
        assert value == expected


@pytest.mark.parametrize("data", [b"", b"{", b'{"a": 1} x', b'"\xff"', b"[1,]"])
def test_what_neither_reads_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)


@pytest.mark.parametrize("number", [_INT64_MIN - 1, _UINT64_MAX + 1, 10**30, -(10**30)])
def test_an_integer_past_64_bits_reads_as_a_float(number: int) -> None:
    # The one difference from json (proxy/jsonread.py): the usage tap then
    # takes no count from it, where json would have given the exact int.
    document = loads(b'{"n": %d}' % number)
    assert isinstance(document, dict)
    assert document["n"] == float(number)
    assert isinstance(document["n"], float)
