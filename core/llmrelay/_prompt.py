"""Flatten a conversation into one prompt string, for backends that take a single question."""

from __future__ import annotations

from ._types import Messages, validate_messages

__all__ = ["format_prompt"]

_SYSTEM_ROLES = frozenset({"system", "developer"})


def format_prompt(
    messages: Messages,
    add_special_tokens: bool = False,
    do_continue: bool = False,
    include_system: bool = True,
) -> str:
    """Return the conversation as one prompt.

    A single message is returned as its text, unchanged, unless ``add_special_tokens`` asks for
    the role-prefixed form. Otherwise each message with non-blank text becomes a line
    ``"<Role>: <text>"`` (role capitalised), the lines are joined with ``"\\n"``, and
    ``"\\nAssistant:"`` is appended so the model answers as the assistant; ``do_continue`` leaves
    that cue off (the last message is continued instead). ``include_system=False`` drops system
    and developer messages. Content given as a list of parts contributes its text parts,
    concatenated.

    Raises:
        InvalidRequest: when ``messages`` is not a valid list of messages.
    """
    checked = validate_messages(messages)
    if not add_special_tokens and len(checked) == 1:
        return checked[0].text
    lines = [
        f"{message.role.capitalize()}: {message.text}"
        for message in checked
        if (include_system or message.role not in _SYSTEM_ROLES) and message.text.strip()
    ]
    formatted = "\n".join(lines)
    return formatted if do_continue else f"{formatted}\nAssistant:"
