"""Typed errors of the IPC layer.

Framing errors (``ProtocolError`` and its subclasses) are raised by the codec; the channel turns
them into a closed channel. Channel errors (``ChannelClosed``, ``RequestTimeout``, ``RemoteError``)
are what callers of ``send``/``request`` see.
"""

from __future__ import annotations

from typing import Any


class IPCError(Exception):
    """Base class of every error raised by ``ipc``."""


class ProtocolError(IPCError):
    """The byte stream does not hold valid frames: the peer is broken or not speaking our protocol.

    ``decoded`` holds the messages that preceded the bad frame in the chunk being decoded.
    """

    decoded: list[Any] = []  # noqa: RUF012 - replaced per instance by the decoder


class MalformedFrame(ProtocolError):
    """A frame whose body is not a valid msgpack message of a known shape."""


class TruncatedFrame(MalformedFrame):
    """The stream ended in the middle of a frame."""


class FrameTooLarge(ProtocolError):
    """A frame (announced by the peer, or about to be sent) is larger than the maximum frame size."""

    def __init__(self, size: int, max_frame_bytes: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum of {max_frame_bytes} bytes")
        self.size = size
        self.max_frame_bytes = max_frame_bytes


class EndOfStream(IPCError):
    """The stream ended cleanly, on a frame boundary."""


class EncodeError(IPCError, TypeError):
    """The data given to ``send``/``request`` (or returned by a handler) is not msgpack-serialisable."""


class ChannelClosed(IPCError):
    """The channel is closed (or closed while waiting); carries the reason it closed."""

    def __init__(self, reason: str = "channel closed") -> None:
        super().__init__(reason)
        self.reason = reason


class RequestTimeout(IPCError, TimeoutError):
    """No reply to a request (or no ``ready``, or no heartbeat answer) before its deadline."""


class SendBufferFull(IPCError):
    """The peer is not reading: the outgoing buffer reached its hard limit, nothing more is queued."""


class RemoteError(IPCError):
    """The handler on the other side raised; carries the remote exception's type name and message."""

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message


class NoHandler(RemoteError):
    """The other side has no handler for the requested event."""


class Overloaded(RemoteError):
    """The other side refused the request: it has ``max_inflight_handlers`` handlers running already."""


NO_HANDLER = "NoHandler"  # remote_type sent back when a request names an event with no handler
OVERLOADED = "Overloaded"  # remote_type sent back when the handler limit is reached
