"""format_prompt, exactly as the Pizzagpt protocol needs it (docs/providers/pizzagpt.md)."""

from __future__ import annotations

import pytest

from llmrelay import format_prompt
from llmrelay.errors import InvalidRequest

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]


def test_single_message_is_its_content_unchanged() -> None:
    assert format_prompt([{"role": "user", "content": "  Привет,\nкак дела?  "}]) == (
        "  Привет,\nкак дела?  "
    )


def test_single_message_with_special_tokens_is_formatted() -> None:
    assert format_prompt([{"role": "user", "content": "Hi"}], add_special_tokens=True) == (
        "User: Hi\nAssistant:"
    )


def test_several_messages_one_line_each_then_assistant_cue() -> None:
    assert format_prompt(CONVERSATION) == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    )


def test_do_continue_leaves_the_cue_off() -> None:
    assert format_prompt(CONVERSATION, do_continue=True).endswith("User: How are you?")


def test_include_system_false_drops_system_and_developer() -> None:
    messages = [{"role": "developer", "content": "rules"}, *CONVERSATION]
    assert format_prompt(messages, include_system=False) == (
        "User: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    )


def test_blank_messages_are_skipped() -> None:
    messages = [{"role": "user", "content": "   "}, {"role": "user", "content": "Hi"}]
    assert format_prompt(messages) == "User: Hi\nAssistant:"


def test_content_parts_text_is_concatenated_and_other_parts_ignored() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "tool", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "tool", "content": "42"},
    ]
    assert format_prompt(messages) == "User: ab\nTool: 42\nAssistant:"


def test_multiline_content_is_kept_verbatim() -> None:
    messages = [
        {"role": "user", "content": "Напиши короткий стих о лете."},
        {"role": "assistant", "content": "Солнце светит ярко,\nЛето наступило!"},
    ]
    assert format_prompt(messages) == (
        "User: Напиши короткий стих о лете.\n"
        "Assistant: Солнце светит ярко,\nЛето наступило!\nAssistant:"
    )


def test_bad_messages_raise_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        format_prompt([{"role": "narrator", "content": "x"}])
