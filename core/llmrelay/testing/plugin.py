"""llmrelay's pytest plugin: replay a provider's cassettes under llmrelay's rules.

pytest loads it through the ``pytest11`` entry point ``llmrelay.testing.plugin`` of the
``llmrelay`` distribution. It is inert until a test uses it: it adds one command-line option,
one marker and two fixtures, and imports neither aiohttp nor vcrpy until a cassette is used.

- ``@pytest.mark.llmrelay_cassette("cassettes/hi.yaml")`` answers the test's HTTP from that
  cassette (relative to the test file); ``rewrite=(from_prefix, to_prefix)`` as for
  ``llmrelay._cassettes.cassette``. A request with no recorded answer fails the test with
  ``CassetteMismatch``, naming the cassette and showing the request; it never reaches the
  network.
- the ``llmrelay_cassette`` fixture is vcrpy's ``Cassette`` of a marked test (``.play_count``,
  ``.all_played``).
- ``--llmrelay-record=missing`` records the cassettes that do not exist yet, ``=all`` records
  every used cassette again; ``LLMRELAY_RECORD`` does the same from the environment. Without
  either, nothing is ever recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._replay import RECORD_ENV, RECORD_MODES, RecordMode, record_mode, use_cassette

__all__ = [
    "MARKER",
    "llmrelay_cassette",
    "llmrelay_record_mode",
    "pytest_addoption",
    "pytest_configure",
]

#: The marker naming a test's cassette.
MARKER = "llmrelay_cassette"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmrelay", "llmrelay cassettes")
    group.addoption(
        "--llmrelay-record",
        dest="llmrelay_record",
        choices=RECORD_MODES,
        default=None,
        metavar="MODE",
        help=(
            "record llmrelay cassettes by calling the real services: 'missing' records the "
            "cassettes that do not exist, 'all' records every one used again, 'none' (the "
            f"default) only replays. Also from ${RECORD_ENV}."
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(path, rewrite=None): answer the test's HTTP requests from the llmrelay "
        "cassette at path (relative to the test file); see llmrelay.testing.",
    )
    try:
        record_mode(config.getoption("llmrelay_record", None))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def llmrelay_record_mode(pytestconfig: pytest.Config) -> RecordMode:
    """``none``, ``missing`` or ``all``: from ``--llmrelay-record``, else ``LLMRELAY_RECORD``."""
    return record_mode(pytestconfig.getoption("llmrelay_record", None))


@pytest.fixture
def llmrelay_cassette(
    request: pytest.FixtureRequest, llmrelay_record_mode: RecordMode
) -> Iterator[Any]:
    """The cassette named by the test's ``llmrelay_cassette`` marker, in use for the test."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None or len(marker.args) != 1:
        pytest.fail(
            f'mark the test @pytest.mark.{MARKER}("path/to/cassette.yaml") to use a cassette',
            pytrace=False,
        )
    unknown = set(marker.kwargs) - {"rewrite"}
    if unknown:
        pytest.fail(f"{MARKER}: unknown argument(s) {', '.join(sorted(unknown))}", pytrace=False)
    path = request.path.parent / marker.args[0]
    mode = llmrelay_record_mode
    if mode == "none" and not path.is_file():
        from ._replay import RECORD_HINT

        pytest.fail(f"cassette {str(path)!r} does not exist; {RECORD_HINT}", pytrace=False)
    with use_cassette(path, mode, rewrite=marker.kwargs.get("rewrite")) as recorded:
        yield recorded


@pytest.fixture(autouse=True)
def _llmrelay_cassette_marker(request: pytest.FixtureRequest) -> None:
    """Put a marked test's cassette in use; does nothing for any other test."""
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue("llmrelay_cassette")
