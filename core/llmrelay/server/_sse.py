"""Writing a stream's Server-Sent Events: frames that are ready together leave together.

An upstream read often holds several events, and the relay hands them over one by one without
waiting in between. Sending each frame on its own costs a ``write()`` system call, aiohttp's
per-write work (a chunked-encoding header each) and a TCP segment the client must read; sending
the frames that are ready together costs one of each.

What is ready together is exactly what the handler produces within one step of its task: it
only stops running when it has to wait for more input. So :class:`FrameWriter` sends the first
frame of a step at once (no delay when frames trickle in one at a time, as a model's tokens
do), holds the frames that follow it in the same step, and sends them in one write as soon as
the step ends (a callback the event loop runs before it resumes the handler), or earlier when
they reach :data:`FLUSH_BYTES`. No frame ever waits for input: a held frame waits at most
while the frames that were ready with it are relayed, and never for more than
:data:`FLUSH_BYTES` of them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["FLUSH_BYTES", "FrameWriter"]

#: Held frames are sent once they reach this size even if the step goes on (a long burst):
#: about 20 frames, so the first held one waits for the relaying of 20 at most, and the client
#: reads one batch while the next is prepared. One write per 20 frames already saves nearly
#: all of the per-write cost.
FLUSH_BYTES = 4 * 1024


class FrameWriter:
    """The frames of one SSE response, written in as few ``write()`` calls as their timing
    allows, in order, with the response's back-pressure.

    ``hold`` queues a frame to go with the next write; ``send`` writes (or, within a step that
    already wrote, holds); ``end`` writes what is held plus its last bytes and ends the
    response. A write made after the step ended runs as a task of its own; its failure (the
    client left) is raised by the next ``send`` or ``end``. ``discard`` drops what is left when
    the handler ends early.
    """

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._loop = asyncio.get_running_loop()
        self._held: list[bytes] = []
        self._held_bytes = 0
        #: A write happened in the current step of the handler's task.
        self._in_step = False
        #: The write of the frames held when the last step ended.
        self._flush: asyncio.Task[None] | None = None
        self._closed = False

    def hold(self, frame: bytes) -> None:
        """Queue ``frame``: it leaves with the next write."""
        self._held.append(frame)
        self._held_bytes += len(frame)

    async def send(self, frame: bytes) -> None:
        if self._flush is not None:
            await self._wait_flush()
        if self._in_step:
            self.hold(frame)
            if self._held_bytes >= FLUSH_BYTES:
                await self._response.write(self._take())
            return
        self._in_step = True
        self._loop.call_soon(self._step_ended)
        if self._held:
            self.hold(frame)
            frame = self._take()
        await self._response.write(frame)

    async def end(self, last: bytes) -> None:
        """Write what is held and ``last`` in one go, and end the response."""
        if self._flush is not None:
            await self._wait_flush()
        self._closed = True
        self.hold(last)
        await self._response.write_eof(self._take())

    def discard(self) -> None:
        """Drop held frames and stop a write in flight: the handler is ending without
        :meth:`end` (the client left, or the task was cancelled)."""
        self._closed = True
        self._held.clear()
        flush, self._flush = self._flush, None
        if flush is None:
            return
        if not flush.done():
            flush.cancel()
        elif not flush.cancelled():
            flush.exception()  # retrieved: the handler reports the departure itself

    def _take(self) -> bytes:
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        return data

    def _step_ended(self) -> None:
        """Run by the event loop once the handler's task has stopped to wait."""
        self._in_step = False
        if self._held and not self._closed and self._flush is None:
            self._flush = self._loop.create_task(self._response.write(self._take()))

    async def _wait_flush(self) -> None:
        """Wait for the write started when the last step ended; raise its error.

        Shielded: a cancelled handler must not cancel a write that has not started yet, or
        the frames in it would be lost while the ones after them (the shutdown's error event)
        still go out. ``discard`` stops it when the handler gives up instead.
        """
        flush = self._flush
        assert flush is not None
        if not flush.done():
            await asyncio.shield(flush)
        self._flush = None
        flush.result()
