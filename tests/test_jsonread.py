"""proxy.jsonread: orjson's speed, json's results."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.jsonread import loads

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: orjson refuses those, json reads them
    | st.floats(allow_nan=False)
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
        pytest.param(b'{"n": 1180591620717411303424}', 2**70, id="integer-past-64-bits"),
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
