"""Messages, FinishReason and Usage: what they accept, what they refuse and how they print."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llmrelay import FinishReason, Message, TextPart, Usage, validate_messages
from llmrelay.errors import InvalidRequest, LLMRelayError


def test_dicts_and_messages_are_accepted_mixed() -> None:
    checked = validate_messages(
        [Message(role="system", content="be brief"), {"role": "user", "content": "hi"}]
    )
    assert [m.role for m in checked] == ["system", "user"]
    assert all(isinstance(m, Message) for m in checked)


def test_content_parts_keep_everything_the_caller_sent() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    (message,) = validate_messages(
        [{"role": "user", "content": [{"type": "text", "text": "look: "}, image], "name": "bob"}]
    )
    assert isinstance(message.content, list)
    assert message.content[0] == TextPart(type="text", text="look: ")
    assert message.content[1].model_dump() == image
    assert message.model_dump()["name"] == "bob"
    assert message.text == "look: "


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "messages must not be empty"),
        ("hello", "messages must be a list of messages, got str"),
        (None, "messages must be a list of messages, got NoneType"),
        ([{"role": "robot", "content": "x"}], "messages[0].role: Input should be"),
        (
            [{"role": "user", "content": "a"}, {"role": "user"}],
            "messages[1].content: Field required",
        ),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"content": "x"}], "messages[0].role: Field required"),
        (["just text"], "messages[0]: Input should be a valid dictionary"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content.0"),
        ([{"role": "user", "content": None}], "messages[0]: Value error, content is required"),
        (  # lax validation decoded bytes without a word
            [{"role": "user", "content": b"hi"}],
            "messages[0].content: Value error, must be text (str), not bytes: decode it first",
        ),
    ],
)
def test_bad_input_names_the_message_and_field(messages: Any, expected: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_messages(messages)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LLMRelayError)
    assert info.value.__cause__ is None  # no pydantic traceback chained onto the user's error


@pytest.mark.parametrize(
    "turn",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},  # left out
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},  # deprecated
    ],
)
def test_assistant_tool_call_turn_may_have_no_content(turn: dict[str, Any]) -> None:
    (message,) = validate_messages([turn])
    assert message.text == ""
    assert message.content is None


@given(st.lists(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4), max_size=4))
def test_arbitrary_dicts_either_validate_or_raise_invalid_request(
    raw: list[dict[str, str]],
) -> None:
    try:
        checked = validate_messages(raw)
    except InvalidRequest as exc:
        message = str(exc)
    else:
        assert len(checked) == len(raw)
        return
    assert message.startswith(("invalid messages: messages[", "messages must not be empty"))


def test_finish_reason_positional_and_prints_nothing() -> None:
    reason = FinishReason("length")
    assert reason.reason == "length"
    assert FinishReason() == FinishReason("stop") == FinishReason(reason="stop")
    assert str(reason) == ""
    assert repr(reason) == "FinishReason('length')"


def test_finish_reason_refuses_unknown_reasons() -> None:
    with pytest.raises(ValueError, match="stop"):
        FinishReason("bored")  # type: ignore[arg-type]


def test_usage_totals_and_prints_nothing() -> None:
    usage = Usage(3, 4)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)
    assert Usage(prompt_tokens=1, completion_tokens=2, total_tokens=5).total_tokens == 5
    assert str(usage) == ""
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Usage(-1, 0)


def test_usage_is_validated_once_and_totals_the_validated_counts() -> None:
    # Counts given as text are validated first, then added (not joined as strings: "37").
    assert Usage("3", "7").total_tokens == 10  # type: ignore[arg-type]
    assert Usage.model_validate({"prompt_tokens": 3, "completion_tokens": 4}).total_tokens == 7
    frozen = Usage(1, 2)
    with pytest.raises(ValueError, match="frozen"):
        frozen.total_tokens = 9  # type: ignore[misc]
    assert frozen == Usage(1, 2, 3)
    assert hash(frozen) == hash(Usage(1, 2, 3))
    assert Usage.model_validate_json('{"prompt_tokens": 2, "completion_tokens": 2}') == Usage(2, 2)
    with pytest.raises(ValueError, match="prompt_tokens"):
        Usage("many", 1)  # type: ignore[arg-type]


def test_any_sequence_of_messages_is_accepted() -> None:
    from collections import UserList

    raw = {"role": "user", "content": "Hi"}
    for messages in ([raw], (raw,), UserList([raw]), [Message(role="user", content="Hi")]):
        checked = validate_messages(messages)
        assert checked == [Message(role="user", content="Hi")]
    mixed = validate_messages([Message(role="system", content="Be brief"), raw])
    assert [m.role for m in mixed] == ["system", "user"]


_counts = st.one_of(st.integers(min_value=-3, max_value=2**70), st.booleans())


@given(_counts, _counts, st.one_of(st.none(), _counts))
@example(-1, 0, None)
@example(0, -1, None)
@example(1, 2, -1)
@example(True, 2, None)
@example(2**70, 1, None)
def test_usage_built_directly_is_what_validation_builds(
    prompt: int, completion: int, total: int | None
) -> None:
    """``Usage(prompt, completion, total)`` is the validator's result (or refusal) for those
    counts, whatever they are, whether or not they take the path for plain ints that skips
    the validator; a missing total is the sum of the validated counts."""
    data = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": 0 if total is None else total,
    }
    try:
        # The validator itself: ``model_validate`` would call ``Usage.__init__``, the code
        # under test (its path for plain counts).
        validated = Usage.__new__(Usage)
        Usage.__pydantic_validator__.validate_python(data, self_instance=validated)
    except ValidationError as exc:
        refused = exc.errors()
    else:
        refused = None
    if refused is not None:
        with pytest.raises(ValidationError) as raised:
            Usage(prompt, completion, total)
        assert raised.value.errors() == refused
        return
    usage = Usage(prompt, completion, total)
    if total is None:  # the sum of the validated counts
        expected = validated.prompt_tokens + validated.completion_tokens
        validated = validated.model_copy(update={"total_tokens": expected})
    assert usage == validated
    assert usage.model_dump() == validated.model_dump()
    assert usage.model_fields_set == validated.model_fields_set
    assert usage.model_extra == validated.model_extra
    assert hash(usage) == hash(validated)
    assert all(type(v) is int for v in usage.model_dump().values())
    with pytest.raises(ValidationError, match="frozen"):
        usage.prompt_tokens = 1  # frozen either way


class _Text(str):
    """A str subclass: validation turns it into a plain str."""


_roles = st.one_of(
    st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", ""]),
    st.integers(),
    st.none(),
    st.builds(_Text, st.sampled_from(["user", "assistant"])),
)
_contents = st.one_of(
    st.text(max_size=6),
    st.none(),
    st.integers(),
    st.builds(_Text, st.text(max_size=3)),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=3)})),
)
_plain_shaped = st.lists(  # two keys, role and content: the shape the fast path looks at
    st.fixed_dictionaries({"role": _roles, "content": _contents}), min_size=1, max_size=3
)
_any_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"content": _contents, "role": _roles}),  # the other key order
        st.fixed_dictionaries(
            {"role": _roles, "content": _contents},
            optional={"name": st.text(max_size=3), "tool_calls": st.lists(st.integers())},
        ),
        st.dictionaries(st.sampled_from(["role", "content", "name"]), _roles, max_size=3),
        st.builds(Message, role=st.just("user"), content=st.text(max_size=3)),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300)
@given(st.one_of(_plain_shaped, _any_messages))
@example([{"role": "robot", "content": "hi"}])
@example([{"role": _Text("user"), "content": "hi"}])
@example([{"role": "user", "content": _Text("hi")}])
@example([{"role": "user", "content": "hi"}, {"role": "user", "content": None}])
@example([{"role": "user", "content": "hi", "name": "bob"}])
def test_messages_checked_in_python_are_what_the_validator_gives(messages: list[Any]) -> None:
    """Plain messages (a known role, text content, nothing else) skip pydantic-core's
    validator; whatever the messages, the result (or the refusal) is the validator's."""
    from llmrelay._types import _MESSAGE_VALIDATOR

    data = [m.model_dump(exclude_unset=True) if isinstance(m, Message) else m for m in messages]
    try:
        expected = _MESSAGE_VALIDATOR.validate_python(data)
    except ValidationError:
        with pytest.raises(InvalidRequest, match=r"^invalid messages: messages\["):
            validate_messages(messages)
        return
    checked = validate_messages(messages)
    assert checked == expected
    for got, want in zip(checked, expected, strict=True):
        assert type(got) is Message
        assert list(got.__dict__.items()) == list(want.__dict__.items())  # order too
        assert [type(v) for v in vars(got).values()] == [type(v) for v in vars(want).values()]
        assert got.model_fields_set == want.model_fields_set
        assert got.model_extra == want.model_extra
        assert got.__pydantic_private__ == want.__pydantic_private__
        if not isinstance(want.content, list):  # (a list in a frozen model cannot be hashed)
            assert hash(got) == hash(want)
        assert got.model_dump_json() == want.model_dump_json()


def test_usage_keeps_what_else_the_provider_reported() -> None:
    """Fields beside the three counts (OpenAI's token details, a cost) are kept as they came,
    compared, dumped, and read as attributes; even one named like ``__init__``'s parameters."""
    details = {"reasoning_tokens": 5, "audio_tokens": 0}
    usage = Usage(10, 7, completion_tokens_details=details, cost=0.25, self=1)
    assert usage.total_tokens == 17
    assert usage.model_extra == {"completion_tokens_details": details, "cost": 0.25, "self": 1}
    assert usage.completion_tokens_details == details  # type: ignore[attr-defined]
    assert usage.model_dump()["completion_tokens_details"] == details
    assert usage != Usage(10, 7)  # what was reported differs
    validated = Usage.model_validate(
        {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": None}
    )
    assert validated.model_extra == {"prompt_tokens_details": None}
    assert Usage(1, 2).model_extra == {}  # the plain counts' path: as validation leaves it
