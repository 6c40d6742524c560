"""Request bodies: the reused encoder writes exactly what ``json.dumps`` would, and refuses
what it refuses, so the bytes sent (and recorded in cassettes) did not change with it."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmrelay._call import _encode, encode_json

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_a_body_is_encoded_exactly_as_json_dumps_would(value: Any) -> None:
    assert encode_json(value) == json.dumps(value, ensure_ascii=False, allow_nan=False)


@given(st.dictionaries(st.integers(), st.text(), max_size=3))
def test_non_string_keys_are_written_as_json_dumps_writes_them(value: dict[int, str]) -> None:
    assert encode_json(value) == json.dumps(value, ensure_ascii=False)


def test_text_is_sent_as_utf8_not_escaped() -> None:
    data, headers = _encode({"question": "Привет, как дела? 🍕"}, None)
    assert data == '{"question": "Привет, как дела? 🍕"}'.encode()
    assert headers == {"Content-Type": "application/json"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_json({"temperature": bad})


def test_a_value_json_cannot_carry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        encode_json({"stop": {"a", "b"}})


def test_a_body_that_contains_itself_is_refused_as_json_dumps_refuses_it() -> None:
    body: dict[str, Any] = {"messages": []}
    body["messages"].append(body)
    with pytest.raises(ValueError, match="Circular reference detected"):
        encode_json(body)
    deep: list[Any] = []
    for _ in range(5 * sys.getrecursionlimit()):  # no cycle, but deeper than any stack
        deep = [deep]
    with pytest.raises(ValueError, match="nesting deeper than Python's recursion limit"):
        encode_json({"stop": deep})
    assert encode_json({"stop": [[["x"]]]}) == '{"stop": [[["x"]]]}'  # the encoder still works


def test_a_failure_leaves_nothing_behind_for_the_next_body() -> None:
    kept = {"messages": [{"role": "user", "content": "hi"}, object()]}
    with pytest.raises(TypeError):
        encode_json(kept)  # fails while inside ``kept`` and its list
    kept["messages"].pop()
    # The very same objects again, now valid: no stale "already being encoded" mark on them.
    assert encode_json(kept) == json.dumps(kept)
    assert encode_json({"a": kept, "b": kept}) == json.dumps({"a": kept, "b": kept})


def test_the_callers_headers_are_never_changed() -> None:
    theirs = {"Authorization": "Bearer sk-test"}
    _, sent = _encode({"a": 1}, theirs)
    assert theirs == {"Authorization": "Bearer sk-test"}
    assert sent == {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_headers_that_name_a_content_type_are_sent_as_they_are(name: str) -> None:
    theirs = {name: "application/json; charset=utf-8", "Accept": "application/json"}
    _, sent = _encode({"a": 1}, theirs)
    assert sent is theirs  # no copy per request, and their own Content-Type kept
    assert theirs == {name: "application/json; charset=utf-8", "Accept": "application/json"}


def test_no_body_sends_no_content_type() -> None:
    data, sent = _encode(None, {"Accept": "application/json"})
    assert data is None
    assert dict(sent) == {"Accept": "application/json"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"question": "x\ud800"}, "'\\ud800', a lone surrogate"),
        ({"a": math.nan}, "Out of range float values"),
        ({"a": {1, 2}}, "set is not JSON serializable"),
        ({"a": b"\xff"}, "bytes is not JSON serializable"),
    ],
)
def test_what_json_cannot_carry_as_it_is_is_refused_naming_the_provider(
    body: dict[str, Any], words: str
) -> None:
    from llmrelay.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"^p: the request cannot be sent as JSON") as info:
        _encode(body, None, "p")
    assert words in str(info.value)


_ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"])


@given(st.lists(st.tuples(_ROLES, st.text()), min_size=1, max_size=5))
def test_plain_messages_are_written_as_the_serializer_writes_them(
    turns: list[tuple[str, str]],
) -> None:
    """Messages of a role and a text skip pydantic's serializer (the OpenAI-compatible
    provider writes their two keys itself): the data must be the serializer's own."""
    from llmrelay import validate_messages
    from llmrelay_openai_compat._provider import _MESSAGES_JSON, _messages_data

    messages = validate_messages([{"role": role, "content": text} for role, text in turns])
    expected = _MESSAGES_JSON(messages, mode="json", exclude_unset=True)
    assert _messages_data("p", messages) == expected
    assert json.dumps(_messages_data("p", messages)) == json.dumps(expected)
