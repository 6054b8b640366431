"""The outgoing side of a channel: write batching and backpressure on its transport.

Batching: the first frame of a loop iteration goes out at once (latency); the rest of that
iteration's frames are joined into one write (throughput). Backpressure: the transport's
pause/resume of writing is tracked in ``paused`` and ``writable``; a peer that lets our answers pile
up past ``max_buffer_bytes`` is cut off; and reading from the peer can be paused and resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loguru import Logger


class Writer:
    """Writes a channel's frames to its transport (set once connected).

    ``batch`` is not None while a flush of this loop iteration's frames is due; ``dispatching`` is
    set by the channel while it handles received data, after which it flushes the batch itself.
    """

    __slots__ = (
        "_batch_bytes",
        "_closed",
        "_log",
        "_loop",
        "_shutdown",
        "batch",
        "dispatching",
        "max_buffer_bytes",
        "paused",
        "transport",
        "writable",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        closed: asyncio.Future[str],
        shutdown: Callable[[str], None],
        log: Logger,
        max_buffer_bytes: int,
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_buffer_bytes = max_buffer_bytes
        self.paused = False
        self.writable = asyncio.Event()  # set while not paused, or once the channel closed
        self.writable.set()
        self.batch: list[bytes] | None = None
        self.dispatching = False
        self._batch_bytes = 0  # sum of len() over batch, kept so buffered_bytes is O(1)
        self._loop = loop
        self._closed = closed
        self._shutdown = shutdown
        self._log = log

    @property
    def buffered_bytes(self) -> int:
        return self._batch_bytes + (self.transport.get_write_buffer_size() if self.transport else 0)

    def write(self, frame: bytes) -> None:
        # Frames written while dispatching received data are flushed when that dispatch ends,
        # which spares the common reply path an extra loop iteration just to run flush.
        if self.batch is None:
            assert self.transport is not None
            self.transport.write(frame)
            self.batch = []
            if not self.dispatching:
                self._loop.call_soon(self.flush)
        else:
            self.batch.append(frame)
            self._batch_bytes += len(frame)

    def flush(self) -> None:
        batch, self.batch = self.batch, None
        self._batch_bytes = 0
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(batch))

    def set_paused(self, paused: bool) -> None:
        # Reading goes on while writes are paused: two peers that flood each other must both
        # keep draining (no deadlock). What bounds memory instead: request() and drain() wait,
        # send() raises SendBufferFull, and a peer that lets our replies pile up past
        # max_buffer_bytes is cut off (check_overflow).
        self.paused = paused
        if paused:
            self.writable.clear()
        else:
            self.writable.set()

    def check_overflow(self) -> None:
        """After writing an answer (reply, error, pong): the peer keeps asking but does not read."""
        if self.buffered_bytes > self.max_buffer_bytes and not self._closed.done():
            self._log.error("peer not reading: {} bytes buffered; closing the channel", self.buffered_bytes)
            if self.transport is not None:
                self.transport.abort()
            self._shutdown(f"peer not reading ({self.buffered_bytes} bytes buffered)")

    def set_reading(self, reading: bool) -> None:
        """Pause or resume reading from the peer, whose own writes then meet its backpressure."""
        if self.transport is None or self.transport.is_closing():
            return
        if reading:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
