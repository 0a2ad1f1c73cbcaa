"""Byte-exact edits of one JSON member: everything but the edited value stays as written."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.jsonedit import add_member, member_spans, replace_value

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(st.text(), _values, max_size=6)
_spacing = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " : ")])


@given(_objects, _spacing, st.booleans())
def test_spans_point_at_each_members_value(
    document: dict[str, object], spacing: tuple[str, str], ascii_: bool
) -> None:
    body = json.dumps(document, separators=spacing, ensure_ascii=ascii_).encode()
    spans = member_spans(body)
    assert spans is not None and set(spans) == set(document)
    for name, (start, end) in spans.items():
        assert json.loads(body[start:end]) == document[name]


@given(_objects, _spacing, st.text())
def test_replacing_a_value_leaves_every_other_byte(
    document: dict[str, object], spacing: tuple[str, str], model: str
) -> None:
    document = {**document, "model": "fast"}
    body = json.dumps(document, separators=spacing).encode()
    spans = member_spans(body)
    assert spans is not None
    start, end = spans["model"]
    edited = replace_value(body, spans["model"], model)
    assert json.loads(edited) == {**document, "model": model}
    assert edited[:start] == body[:start]
    assert edited[len(edited) - (len(body) - end) :] == body[end:]


def test_the_last_of_a_repeated_name_is_the_one_parsers_keep() -> None:
    body = b'{"model": "a", "x": {"model": "inner"}, "model": "b"}'
    spans = member_spans(body)
    assert spans is not None
    assert body[slice(*spans["model"])] == b'"b"'
    assert json.loads(replace_value(body, spans["model"], "c"))["model"] == "c"


def test_escaped_quotes_and_backslashes_do_not_end_a_string() -> None:
    body = b'{"messages": "say \\"}\\" and \\\\", "model": "m"}'
    spans = member_spans(body)
    assert spans is not None and body[slice(*spans["model"])] == b'"m"'


def test_adding_a_member() -> None:
    assert add_member(b"{}", "max_tokens", 5) == b'{"max_tokens":5}'
    assert add_member(b' { "a": 1 }', "m", "é") == ' {"m":"é", "a": 1 }'.encode()


def test_not_an_object() -> None:
    assert member_spans(b"[1, 2]") is None
    assert member_spans(b'"text"') is None
    assert member_spans(b"") is None
