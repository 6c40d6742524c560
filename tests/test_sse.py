"""The SSE decoder: the spec's framing rules, under any chunking (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrelay.sse import SSEDecoder, SSEEvent, SSETooLarge

MIXED = (
    "\ufeff: keep-alive\r\n"
    'data: {"a": 1}\r\n\r\n'
    "event: update\nid: 7\ndata: line one\ndata: line two\n\n"
    "data:no-space\rretry: 1500\r\r"
    "data: été — 日本\n\n"
    ": comment\n"
    "data\n\n"
    "data: [DONE]\n\n"
    "data: unterminated"
).encode()

EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", "update", "7"),
    SSEEvent("no-space", "message", "7", 1500),
    SSEEvent("été — 日本", "message", "7", 1500),
    SSEEvent("", "message", "7", 1500),
    SSEEvent("[DONE]", "message", "7", 1500),
]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def test_mixed_stream_in_one_piece() -> None:
    assert decode([MIXED]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode([MIXED[i : i + 1] for i in range(len(MIXED))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=40))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(MIXED)]
    assert decode([MIXED[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"),
    max_size=30,
)


@settings(max_examples=200)
@given(
    st.lists(st.lists(_text, min_size=1, max_size=3), min_size=1, max_size=6),
    st.sampled_from(["\n", "\r", "\r\n"]),
    st.data(),
)
def test_round_trip_in_every_newline_style(
    payloads: list[list[str]], newline: str, data: st.DataObject
) -> None:
    raw = "".join(
        "".join(f"data: {line}{newline}" for line in lines) + newline for lines in payloads
    ).encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    bounds = [0, *sorted(cuts), len(raw)]
    events = decode([raw[a:b] for a, b in itertools.pairwise(bounds)])
    assert [e.data for e in events] == ["\n".join(lines) for lines in payloads]


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [SSEEvent("a\nb")]


def test_oversized_line_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSETooLarge):
        decoder.feed(b"data: " + b"x" * 100)
    decoder = SSEDecoder(max_event_bytes=64)
    for _ in range(2):  # 2 x 27 bytes fit in 64
        decoder.feed(b"data: " + b"x" * 20 + b"\n")
    with pytest.raises(SSETooLarge):
        decoder.feed(b"data: " + b"x" * 20 + b"\n")
