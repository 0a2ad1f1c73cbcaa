"""HTTP/1.1 wire details the fast server and client share (proxy/http/wire.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http.wire import line_breaks, name_of, value_of

_CONTROLS_BUT_HTAB = {*range(32), 127} - {9}


@given(st.binary(max_size=300))
def test_line_breaks_counts_cr_lf_and_every_control_byte_but_htab(data: bytes) -> None:
    assert line_breaks(data) == sum(byte in _CONTROLS_BUT_HTAB for byte in data)


def test_a_well_formed_head_has_two_line_breaks_per_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nx-text: a\tb \x80\xff\r\ncontent-length: 2\r\n\r\n"
    assert line_breaks(head) == 2 * 4
    assert line_breaks(head.replace(b"a\tb", b"a\rb")) == 2 * 4 + 1


def test_header_pairs_are_read_from_tuples_and_lists_alike() -> None:
    for pair in ((b"a", b"1"), [b"a", b"1"]):
        assert (name_of(pair), value_of(pair)) == (b"a", b"1")
