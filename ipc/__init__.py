"""corral's IPC layer: length-prefixed msgpack frames and an asyncio request/reply channel.

Knows nothing of pools, workers or Redis; imported by both the supervisor and its children.
"""

from corral.ipc.channel import DEFAULT_TIMEOUT_S, Channel, socketpair
from corral.ipc.errors import (
    ChannelClosed,
    EncodeError,
    EndOfStream,
    FrameTooLarge,
    IPCError,
    MalformedFrame,
    NoHandler,
    Overloaded,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    SendBufferFull,
    TruncatedFrame,
)
from corral.ipc.frames import FrameDecoder, FrameEncoder
from corral.ipc.handlers import Handler

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Channel",
    "ChannelClosed",
    "EncodeError",
    "EndOfStream",
    "FrameDecoder",
    "FrameEncoder",
    "FrameTooLarge",
    "Handler",
    "IPCError",
    "MalformedFrame",
    "NoHandler",
    "Overloaded",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "SendBufferFull",
    "TruncatedFrame",
    "socketpair",
]
