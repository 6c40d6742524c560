"""An incremental Server-Sent Events decoder, for providers that stream.

Why not ``async for line in response.content``: aiohttp's line reader splits only on ``\\n``
(a CR-only stream arrives as one line) and raises ``LineTooLong`` past 512 KiB, which cassette
replay never shows. This decoder takes bytes in any chunking and follows the SSE rules:
``\\r\\n``, ``\\n`` and bare ``\\r`` line ends (also split across chunks), UTF-8 decoded per
complete line, a leading BOM dropped, ``:`` comments ignored, multi-line ``data`` joined with
``\\n``, ``event``/``id``/``retry`` fields, and dispatch on a blank line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "SSEEvent", "SSETooLarge"]

#: The largest line or pending event the decoder holds before refusing (16 MiB).
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSETooLarge(ValueError):
    """An event grew past the decoder's limit (a runaway or hostile stream)."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event. ``event`` defaults to ``"message"``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with :meth:`feed`, get complete events back; call :meth:`close` at EOF."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_event_bytes
        self._data: list[str] = []
        self._data_bytes = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._first_line = True
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` (any size, any split) and return the events it completed."""
        if not chunk:
            return []
        buffer = self._buffer
        if self._pending_cr:
            # The previous chunk ended with "\r": a "\n" here belongs to that line end.
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer += chunk
        events: list[SSEEvent] = []
        if b"\r" in buffer:
            start = self._split_any(buffer, events)
        else:  # "\n" line ends only, as nearly every server sends: split in C
            last = buffer.rfind(b"\n")
            if last != -1:  # complete lines only: a long unfinished line is not copied
                for line in buffer[:last].split(b"\n"):
                    self._line(line, events)
            start = last + 1
        del buffer[:start]
        if len(buffer) > self._max:
            raise SSETooLarge(f"an SSE line exceeded {self._max} bytes")
        return events

    def _split_any(self, buffer: bytearray, events: list[SSEEvent]) -> int:
        """Process the complete lines of ``buffer``, whatever their line ends; return where
        the unfinished last line starts."""
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                end = cr
                if cr + 1 < length:
                    step = 2 if buffer[cr + 1] == 0x0A else 1
                else:
                    step = 1
                    self._pending_cr = True  # maybe half of "\r\n": drop a leading "\n" next
            else:
                end, step = lf, 1
            self._line(buffer[start:end], events)
            start = end + step
        return start

    def close(self) -> list[SSEEvent]:
        """End of stream. An unterminated last line is processed; an event without its blank
        line is discarded, as the SSE spec says (the sender never finished it)."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer.clear()
        self._data, self._data_bytes, self._event = [], 0, ""
        return events

    def _line(self, raw: bytes | bytearray, events: list[SSEEvent]) -> None:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            if self._data:
                events.append(
                    SSEEvent(
                        "\n".join(self._data), self._event or "message", self._last_id, self._retry
                    )
                )
            self._data, self._data_bytes, self._event = [], 0, ""
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_bytes += len(raw)
            if self._data_bytes > self._max:
                raise SSETooLarge(f"an SSE event exceeded {self._max} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
