"""The server's SSE writer: frames ready together leave in one write, none waits for input.

A response that records its writes stands in for the socket, so each test can say exactly
which bytes left in which ``write()``; the end-to-end frames are tested in test_server.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from llmrelay.server._sse import FLUSH_BYTES, FrameWriter


class Recorder(web.StreamResponse):
    """Records what is written; ``gate`` (when set) holds each write, as a full socket does."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.ended: bytes | None = None
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    async def write(self, data: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append(bytes(data))
        if self.gate is not None:
            await self.gate.wait()

    async def write_eof(self, data: Any = b"") -> None:
        self.ended = bytes(data)


async def _next_step() -> None:
    """Let the event loop run what the last step scheduled (and what that scheduled)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_frames_ready_together_leave_together() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    for frame in (b"a", b"b", b"c"):
        await writer.send(frame)
    assert response.writes == [b"a"]  # the first at once, the rest held
    await _next_step()
    assert response.writes == [b"a", b"bc"]
    await writer.end(b"z")
    assert response.ended == b"z"


async def test_frames_that_trickle_in_leave_at_once() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    for frame in (b"a", b"b", b"c"):
        await writer.send(frame)
        assert response.writes[-1] == frame  # nothing held back while waiting for input
        await _next_step()
    assert response.writes == [b"a", b"b", b"c"]


async def test_held_frames_go_with_the_next_write_and_the_end() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    writer.hold(b"role;")
    await writer.send(b"text;")
    assert response.writes == [b"role;text;"]
    await writer.send(b"more;")
    await writer.end(b"done")
    assert response.ended == b"more;done"
    await _next_step()
    assert response.writes == [b"role;text;"]  # nothing written after the end


async def test_a_long_burst_is_written_as_it_grows() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    frame = b"x" * 1000
    count = 3 * FLUSH_BYTES // len(frame) + 1
    for _ in range(count):
        await writer.send(frame)
    assert len(response.writes) >= 3  # the first, then one per FLUSH_BYTES, before any wait
    assert all(len(data) <= FLUSH_BYTES + len(frame) for data in response.writes)
    await writer.end(b"")
    assert b"".join(response.writes) + (response.ended or b"") == frame * count


async def test_a_slow_client_holds_the_handler_back() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    await writer.send(b"a")
    await writer.send(b"b")
    response.gate = asyncio.Event()
    await _next_step()  # the write of "b" starts and waits for the socket
    sent = asyncio.ensure_future(writer.send(b"c"))
    await _next_step()
    assert not sent.done()  # back-pressure: "c" waits until "b" is out
    response.gate.set()
    await sent
    assert response.writes == [b"a", b"b", b"c"]


async def test_a_failed_write_is_raised_by_the_next_send() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    await writer.send(b"a")
    await writer.send(b"b")
    response.fail = ConnectionResetError("client gone")
    await _next_step()
    with pytest.raises(ConnectionResetError):
        await writer.send(b"c")


async def test_cancelling_the_handler_keeps_a_started_write_in_order() -> None:
    """The shutdown path: the handler is cancelled while its last frames are being written;
    the error event it then sends must come after them, and nothing may be lost."""
    response = Recorder()
    writer = FrameWriter(response)
    await writer.send(b"a")
    await writer.send(b"b")
    response.gate = asyncio.Event()
    await _next_step()
    handler = asyncio.ensure_future(writer.send(b"c"))
    await _next_step()
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    response.gate.set()
    await writer.end(b"error;done")
    assert response.writes == [b"a", b"b"]
    assert response.ended == b"error;done"


async def test_discard_drops_held_frames() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    await writer.send(b"a")
    await writer.send(b"b")
    writer.discard()  # the handler ends in the step that held "b"
    await _next_step()
    assert response.writes == [b"a"]


async def test_discard_stops_a_write_in_flight() -> None:
    response = Recorder()
    writer = FrameWriter(response)
    await writer.send(b"a")
    await writer.send(b"b")
    response.gate = asyncio.Event()
    await _next_step()  # the write of "b" waits for the socket
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert others
    writer.discard()
    await _next_step()
    assert all(task.cancelled() for task in others)
