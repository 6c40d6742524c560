"""Which cassettes a test run may record, and the cassette of one test.

A test run replays by default. Recording happens only when asked for, with
``pytest --llmrelay-record=MODE`` or the environment variable ``LLMRELAY_RECORD=MODE``:

- ``none`` (the default): replay; a missing cassette or an unmatched request fails the test;
- ``missing``: record the cassettes that do not exist yet, replay the others;
- ``all``: record every cassette a test uses again, replacing the old file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from .. import errors
from .._cassettes import cassette

__all__ = ["RECORD_ENV", "RecordMode", "record_mode", "use_cassette"]

#: The environment variable that switches recording on (``missing`` or ``all``).
RECORD_ENV = "LLMRELAY_RECORD"

RecordMode = Literal["none", "missing", "all"]
RECORD_MODES: tuple[str, ...] = get_args(RecordMode)

#: What a missing cassette's error tells the reader to do.
RECORD_HINT = (
    f"record it with `pytest --llmrelay-record=missing` (or {RECORD_ENV}=missing), "
    "which calls the real service"
)


def record_mode(option: str | None = None) -> RecordMode:
    """The record mode: ``option`` (from ``--llmrelay-record``) if given, else the environment.

    Raises:
        ValueError: the value is not one of ``none``, ``missing``, ``all``.
    """
    source = "--llmrelay-record"
    if option is None:
        option, source = os.environ.get(RECORD_ENV, ""), RECORD_ENV
    value = option.strip().lower() or "none"
    if value == "none":
        return "none"
    if value == "missing":
        return "missing"
    if value == "all":
        return "all"
    raise ValueError(f"{source}: expected one of {', '.join(RECORD_MODES)}, got {option!r}")


@contextlib.contextmanager
def use_cassette(
    path: str | os.PathLike[str],
    mode: RecordMode = "none",
    *,
    rewrite: tuple[str, str] | None = None,
) -> Iterator[Any]:
    """Replay ``path``, or record it when ``mode`` says so; yields vcrpy's ``Cassette``.

    The rules are llmrelay's (``llmrelay._cassettes.cassette``): method, full URL and JSON body
    must match; an unmatched request raises ``CassetteMismatch`` and never reaches the network;
    secrets are scrubbed before anything is written.

    Raises:
        CassetteMismatch: replaying, and the cassette does not exist (the message says how to
            record it).
    """
    target = Path(path)
    if mode == "all":
        target.parent.mkdir(parents=True, exist_ok=True)
        with cassette(target, mode="overwrite", rewrite=rewrite) as recorded:
            yield recorded
        return
    if mode == "missing" and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with cassette(target, mode="record", rewrite=rewrite) as recorded:
            yield recorded
        return
    if not target.is_file():
        raise errors.CassetteMismatch(f"cassette {str(target)!r} does not exist; {RECORD_HINT}")
    with cassette(target, rewrite=rewrite) as recorded:
        yield recorded
