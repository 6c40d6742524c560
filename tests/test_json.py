"""``llmrelay._json.loads``: pydantic-core's parser must give exactly what ``json.loads`` gives."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import from_json

from llmrelay._json import loads

#: Every JSON value (NaN aside: it is not equal to itself), ints far past 64 bits included.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def typed(value: Any) -> Any:
    """``value`` with each number's type kept (``1 == 1.0 == True`` in plain equality)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


@given(
    value=JSON_VALUES,
    ensure_ascii=st.booleans(),
    compact=st.booleans(),
    as_bytes=st.booleans(),
)
def test_same_values_as_json_loads(
    value: Any, ensure_ascii: bool, compact: bool, as_bytes: bool
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators)
    data: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert typed(loads(data)) == typed(json.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        '"\\ud800"',  # a lone surrogate escape: pydantic-core refuses it
        codecs.BOM_UTF8 + b'{"a": 1}',
        '{"a": 1}'.encode("utf-16"),
        '{"a": [1, 2.5, "é"]}'.encode("utf-32-le"),
        '{"a": 1, "a": 2}',  # duplicate keys: the last wins
        "1e400",
        "NaN",
        "-Infinity",
    ],
)
def test_what_only_json_loads_reads_still_reads(data: str | bytes) -> None:
    expected = json.loads(data)
    got = loads(data)
    assert typed(got) == typed(expected) or (got != got and expected != expected)  # NaN


def test_the_fast_parser_is_really_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-core parses what it can; ``json.loads`` only sees what it refuses."""
    import llmrelay._json

    seen: list[str] = []
    original = json.loads

    def fallback(data: str | bytes) -> Any:
        seen.append(str(data))
        return original(data)

    monkeypatch.setattr(llmrelay._json.json, "loads", fallback)
    assert loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert seen == []
    with pytest.raises(ValueError, match="hex escape"):
        from_json('"\\ud800"')
    assert loads('"\\ud800"') == "\ud800"
    assert seen == ['"\\ud800"']


@pytest.mark.parametrize("data", ["", "{", '{"a": 1} x', "[1,]", b"\xff\xfe\x00", b'"\xff"'])
def test_not_json_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json.loads's own errors, whichever applies
        json.loads(data)
    with pytest.raises(ValueError):  # noqa: PT011
        loads(data)
