"""Record and replay provider traffic with vcrpy, under llmrelay's rules.

The rules, the same for the CLI (``llmrelay chat --replay``), this repo's tests and plugin
authors' tests:

- replay matches the method, the full URL and the JSON body (key order ignored);
- a request with no recorded answer raises :class:`~llmrelay.errors.CassetteMismatch` naming the
  cassette and showing the request; replay never falls through to the network;
- recording happens only when asked for, and refuses to overwrite a cassette unless told to;
- secrets are scrubbed from headers, query strings and bodies before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import errors
from ._redact import (
    REDACTED,
    SECRET_HEADERS,
    cookie_values,
    looks_secret,
    looks_secret_query,
    redact,
)

__all__ = ["MATCH_ON", "cassette", "vcr_config"]

#: What a replayed request must share with a recorded one.
MATCH_ON = ("method", "scheme", "host", "port", "path", "query", "json_body")

_SECRET_BODY_FIELDS = frozenset({"api_key", "apikey", "password", "token", "access_token"})


def _normalise_body(body: Any) -> Any:
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            return json.loads(body)
        except ValueError:
            return body
    return body or None


def json_body(r1: Any, r2: Any) -> None:
    """vcrpy matcher: equal JSON bodies match whatever their key order or encoding."""
    b1, b2 = _normalise_body(r1.body), _normalise_body(r2.body)
    if b1 != b2:
        raise AssertionError(f"JSON bodies differ: {_short(b1)} != {_short(b2)}")


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Scrubber:
    """Removes secrets from what vcrpy records, remembering each value it removes.

    Header, query and body secrets of a request are masked where they stand, and their values
    are remembered, so a server that echoes them back (an error quoting the key, a debug field
    reflecting a cookie) has them masked in the response body too. ``Set-Cookie`` values are
    remembered before the header is dropped, for the same reason.
    """

    _MIN_SECRET = 6  # shorter values ("1", "true") would mask innocent text

    def __init__(self, rewrite: tuple[str, str] | None) -> None:
        self.rewrite = rewrite
        self.known: set[str] = set()

    def _remember(self, value: str) -> None:
        value = value.strip()
        if len(value) >= self._MIN_SECRET:
            self.known.add(value)

    def _remember_header(self, name: str, value: str) -> None:
        if name in ("cookie", "set-cookie"):
            for cookie in cookie_values(value):
                self._remember(cookie)
        else:
            self._remember(value)
            self._remember(value.partition(" ")[2])  # "Bearer <token>" -> the token

    def _mask(self, text: str) -> str:
        for value in sorted(self.known, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return redact(text)

    def request(self, request: Any) -> Any:
        for name in list(request.headers):
            if looks_secret(name):
                self._remember_header(name.lower(), str(request.headers[name]))
                request.headers[name] = REDACTED
        for name in list(request.headers):  # the rest: secret-shaped or known values inside
            value = str(request.headers[name])
            masked = self._mask(value)
            if masked != value:
                request.headers[name] = masked
        parts = urlsplit(request.uri)
        if parts.query:
            query = []
            for key, value in parse_qsl(parts.query, keep_blank_values=True):
                if looks_secret_query(key):
                    self._remember(value)
                    value = REDACTED
                query.append((key, value))
            request.uri = urlunsplit(parts._replace(query=urlencode(query, safe="*")))
        if self.rewrite is not None and request.uri.startswith(self.rewrite[0]):
            request.uri = self.rewrite[1] + request.uri[len(self.rewrite[0]) :]
        body = _normalise_body(request.body)
        if isinstance(body, dict | list):
            scrubbed = self._json(body)
            request.body = json.dumps(scrubbed, ensure_ascii=False).encode("utf-8")
        elif isinstance(body, str):
            request.body = self._mask(body).encode("utf-8")
        return request

    def _json(self, value: Any) -> Any:
        """Secret fields masked at any depth, and secret-shaped strings redacted."""
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key.lower() in _SECRET_BODY_FIELDS:
                    if isinstance(item, str):
                        self._remember(item)
                    out[key] = REDACTED
                else:
                    out[key] = self._json(item)
            return out
        if isinstance(value, list):
            return [self._json(v) for v in value]
        if isinstance(value, str):
            return self._mask(value)
        return value

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        headers = response.get("headers", {})
        for name in list(headers):
            if name.lower() in SECRET_HEADERS:
                for value in headers[name]:
                    self._remember_header(name.lower(), str(value))
                del headers[name]
        for name in list(headers):  # kept, but not a secret the server echoed back in them
            headers[name] = [self._mask(str(value)) for value in headers[name]]
        body = response.get("body", {}).get("string")
        if isinstance(body, bytes):
            text = body.decode("utf-8", errors="surrogateescape")
            scrubbed = self._mask(text)
            if scrubbed != text:
                response["body"]["string"] = scrubbed.encode("utf-8", errors="surrogateescape")
        return response


def vcr_config(rewrite: tuple[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments llmrelay hands to ``vcr.VCR`` (record mode excluded).

    ``rewrite=(from_prefix, to_prefix)`` rewrites recorded URLs, so a cassette recorded against
    a local replica carries the real service's URL and replays for the real provider.
    """
    scrubber = _Scrubber(rewrite)
    return {
        "serializer": "yaml",
        "match_on": list(MATCH_ON),
        "before_record_request": scrubber.request,
        "before_record_response": scrubber.response,
        "decode_compressed_response": True,
    }


#: What ``cassette(mode=...)`` accepts.
_MODES = ("replay", "record", "overwrite")


@contextlib.contextmanager
def cassette(
    path: str | os.PathLike[str],
    *,
    mode: Literal["replay", "record", "overwrite"] = "replay",
    rewrite: tuple[str, str] | None = None,
) -> Iterator[Any]:
    """Replay (default) or record the HTTP traffic inside the ``with`` block.

    ``mode="record"`` writes a new cassette and refuses an existing one; ``"overwrite"``
    replaces it. Yields vcrpy's ``Cassette`` (``.play_count``, ``.all_played``, ...).

    Raises:
        CassetteMismatch: replaying, and the cassette is missing or holds no answer for a
            request made inside the block.
        FileExistsError: recording over an existing cassette without ``mode="overwrite"``.
        InvalidRequest: an unknown ``mode``, or ``path`` is no file path (a directory, None).
    """
    if mode not in _MODES:  # a typo must not record: that would reach the network
        raise errors.InvalidRequest(
            f"cassette mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}"
        )
    if not isinstance(path, str | os.PathLike):
        raise errors.InvalidRequest(
            f"cassette path must be a str or a path, got {type(path).__name__}"
        )
    import vcr
    from vcr.errors import CannotOverwriteExistingCassetteException

    target = Path(path)
    if target.is_dir():
        raise errors.InvalidRequest(f"cassette {str(target)!r} is a directory, not a file")
    if mode == "replay" and not target.is_file():
        raise errors.CassetteMismatch(f"cassette {str(target)!r} does not exist")
    if mode == "record" and target.exists():
        raise FileExistsError(
            f"cassette {str(target)!r} already exists; choose another path or overwrite it"
        )
    if mode == "overwrite" and target.exists():
        target.unlink()
    # Replays may repeat an interaction: a retried request meets the same recorded failure,
    # as it would meet a server that keeps failing.
    recorder = vcr.VCR(record_mode="none" if mode == "replay" else "all", **vcr_config(rewrite))
    recorder.register_matcher("json_body", json_body)
    if mode == "replay":
        _check_loadable(recorder, target)
    try:
        with recorder.use_cassette(
            str(target), allow_playback_repeats=mode == "replay"
        ) as recorded:
            yield recorded
    except CannotOverwriteExistingCassetteException as exc:
        raise mismatch_error(exc) from None


def _check_loadable(recorder: Any, target: Path) -> None:
    """Refuse a file that is not a cassette, with one line that says so.

    vcrpy would raise whatever its YAML loader or its own code meets (a parser error, a
    ``KeyError: 'interactions'``, a ``TypeError``), or treat the file as empty after logging a
    traceback; a cassette given to replay is read once here first.
    """
    serializer = recorder.serializers[recorder.serializer]
    try:
        if not target.read_bytes().strip():
            raise ValueError("the file is empty")
        recorder.persister.load_cassette(str(target), serializer=serializer)
    except Exception as exc:  # anything the loader meets means the same: not a cassette
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise errors.CassetteMismatch(
            f"{str(target)!r} is not a valid cassette ({type(exc).__name__}: {redact(detail)}); "
            "record one with `llmrelay record` or the cassette() helper"
        ) from None


def as_mismatch(exc: BaseException) -> errors.CassetteMismatch | None:
    """vcrpy's "no match" error as a ``CassetteMismatch``, or None for any other error.

    Cheap when vcrpy is not in use: it only looks at ``sys.modules``.
    """
    vcr_errors = sys.modules.get("vcr.errors")
    if vcr_errors is None or not isinstance(
        exc, vcr_errors.CannotOverwriteExistingCassetteException
    ):
        return None
    return mismatch_error(exc)


def mismatch_error(exc: Any) -> errors.CassetteMismatch:
    """Describe vcrpy's refusal: the cassette, the request (scrubbed), the closest difference."""
    path = Path(exc.cassette._path)
    request = exc.failed_request
    body = _normalise_body(request.body)
    lines = [
        f"cassette {str(path)!r} has no recorded answer for this request "
        f"({exc.reason.replace('_', ' ')}):",
        f"  {request.method} {redact(request.uri)}",
    ]
    if body is not None:
        lines.append(f"  body: {redact(_short(body, 300))}")
    for _recorded, _ok, failed in exc.similar_requests[:1]:
        for matcher, message in failed:
            lines.append(f"  closest recorded request differs in {matcher}: {redact(str(message))}")
    return errors.CassetteMismatch("\n".join(lines))
