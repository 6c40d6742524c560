"""Parse the JSON that providers send: pydantic-core's parser first, ``json.loads`` for the rest.

Every answer, and every chunk of a streamed one, is parsed here, so the parser is on the hot
path. pydantic-core's ``from_json`` (Rust, already a dependency through pydantic) parses a
typical answer two to three times faster than ``json.loads`` and gives the same values for
every JSON text both accept: the same ints (big ones too), the same floats, the last of
duplicate keys (``tests/test_json.py`` checks this with hypothesis). What it refuses and
``json.loads`` accepts (a lone surrogate escape such as ``"\\ud800"``, a byte order mark,
UTF-16 or UTF-32 bytes) goes on to ``json.loads``, so the result, and the error for text that
is not JSON (a ``ValueError``), are always ``json.loads``'s.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import from_json

__all__ = ["loads"]


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``, faster.

    Raises:
        ValueError: ``data`` is not JSON (``json.JSONDecodeError``, or ``UnicodeDecodeError``
            for bytes in no encoding JSON allows).
    """
    try:
        return from_json(data)
    except ValueError:
        return json.loads(data)
