"""Length-prefixed msgpack frames: the wire format between the supervisor and its children.

A stream carries frames back to back; each frame is a 4-byte big-endian length followed by
exactly that many bytes of one msgpack message::

    offset  0        1        2        3        4 ...................... 4+N
           +--------+--------+--------+--------+--------------------------+
           |      N: body length (uint32, BE)  |  body: msgpack, N bytes  |
           +--------+--------+--------+--------+--------------------------+

The body is a msgpack array whose first item is the message kind::

    [0, info]                     READY    the child finished start(); info is any msgpack value
    [1, event, data]              SEND     fire-and-forget event
    [2, id, event, data]          REQUEST  expects a REPLY or ERROR with the same id
    [3, id, data]                 REPLY    the handler's return value
    [4, id, type, message]        ERROR    the handler raised (type name and message as strings)
    [5, nonce]                    PING     heartbeat, answered by the peer's event loop
    [6, nonce]                    PONG     answer to PING with the same nonce

``event``, ``type`` and ``message`` are strings, ``id`` and ``nonce`` unsigned integers, ``data`` any
msgpack value (nil, bool, int, float, str, bin, array, map). Nothing but msgpack types cross; there
is no pickle anywhere. A body larger than ``max_frame_bytes`` is refused on both ends.

``FrameEncoder`` and ``FrameDecoder`` do no I/O: the encoder turns messages into bytes and the
decoder turns bytes (in chunks of any size) into messages, or raises a typed ``ProtocolError``.
"""

from __future__ import annotations

import reprlib
import struct
from typing import Any, NamedTuple, NoReturn

import msgpack

from corral.ipc.errors import (
    EncodeError,
    EndOfStream,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    TruncatedFrame,
)

HEADER = struct.Struct(">I")
HEADER_BYTES = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024


class Ready(NamedTuple):
    info: Any


class Send(NamedTuple):
    event: str
    data: Any


class Request(NamedTuple):
    id: int
    event: str
    data: Any


class Reply(NamedTuple):
    id: int
    data: Any


class Error(NamedTuple):
    id: int
    type: str
    message: str


class Ping(NamedTuple):
    nonce: int


class Pong(NamedTuple):
    nonce: int


Message = Ready | Send | Request | Reply | Error | Ping | Pong

# kind number -> (message class, field validators); the order of fields is the wire order.
_ANY = object
_SCHEMA: dict[int, tuple[type, tuple[type, ...]]] = {
    0: (Ready, (_ANY,)),
    1: (Send, (str, _ANY)),
    2: (Request, (int, str, _ANY)),
    3: (Reply, (int, _ANY)),
    4: (Error, (int, str, str)),
    5: (Ping, (int,)),
    6: (Pong, (int,)),
}
KIND_OF: dict[type, int] = {cls: kind for kind, (cls, _) in _SCHEMA.items()}
# What decode_body checks, precomputed: kind -> (class, array length, (index, type) of typed fields).
_LAYOUT: dict[int, tuple[type[tuple[Any, ...]], int, tuple[tuple[int, type], ...]]] = {
    kind: (cls, len(fields) + 1, tuple((i, t) for i, t in enumerate(fields, 1) if t is not _ANY))
    for kind, (cls, fields) in _SCHEMA.items()
}
_new_tuple = tuple.__new__


class FrameEncoder:
    """Turns messages into frames. One per channel (it reuses a msgpack ``Packer``)."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def encode(self, message: Message) -> bytes:
        """Frame one message; raises ``EncodeError`` or ``FrameTooLarge`` and sends nothing."""
        try:
            body: bytes = self._packer.pack([KIND_OF[type(message)], *message])
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc
        if len(body) > self.max_frame_bytes:
            raise FrameTooLarge(len(body), self.max_frame_bytes)
        return HEADER.pack(len(body)) + body


def decode_body(body: bytes | memoryview) -> Message:
    """Decode one frame body into a message; raises ``MalformedFrame`` on anything else."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        # not !r: ExtraData carries the whole decoded object (huge, or too deep to repr)
        raise MalformedFrame(f"undecodable frame body: {type(exc).__name__}: {exc}") from exc
    if type(obj) is not list or not obj:
        raise MalformedFrame(f"frame body is not a non-empty array: {type(obj).__name__}")
    kind = obj[0]
    layout = _LAYOUT.get(kind) if type(kind) is int else None
    if layout is None:
        raise MalformedFrame(f"unknown message kind {reprlib.repr(kind)}")
    cls, length, typed_fields = layout
    if len(obj) != length:
        raise MalformedFrame(f"{cls.__name__} expects {length - 1} fields, got {len(obj) - 1}")
    for index, expected in typed_fields:  # hot path: only the str/int fields, no zip or slices
        value = obj[index]
        if type(value) is not expected or (type(value) is int and value < 0):
            # reprlib: a bounded repr (a deeply nested value would raise RecursionError with !r)
            raise MalformedFrame(f"{cls.__name__}: bad field {reprlib.repr(value)}")
    del obj[0]
    # == cls(*obj[1:]) minus the Python-level __new__; the checks above guarantee a valid message
    message: Message = _new_tuple(cls, obj)  # type: ignore[assignment]
    return message


class FrameDecoder:
    """Incremental frame decoder: ``feed`` chunks of any size, get whole messages back.

    After a ``ProtocolError`` the decoder is poisoned: every later call raises the same error.
    Messages that precede the bad frame in the same chunk are available as ``error.decoded``.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray | memoryview = buf
        else:
            view = data
        out: list[Message] = []
        pos, end_of_data = 0, len(view)
        with memoryview(view) as mv:
            try:
                while end_of_data - pos >= HEADER_BYTES:
                    (size,) = HEADER.unpack_from(mv, pos)
                    if size > self.max_frame_bytes:
                        raise FrameTooLarge(size, self.max_frame_bytes)
                    end = pos + HEADER_BYTES + size
                    if end > end_of_data:
                        break
                    out.append(decode_body(mv[pos + HEADER_BYTES : end]))
                    pos = end
            except ProtocolError as exc:
                self._poison(exc, out)
            rest = None if view is buf else bytes(mv[pos:])
        if rest is None:
            del buf[:pos]
        else:
            buf += rest
        return out

    def eof(self) -> NoReturn:
        """The stream ended: raises ``EndOfStream`` on a frame boundary, ``TruncatedFrame`` if not."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._poison(TruncatedFrame(f"stream ended inside a frame ({len(self._buf)} bytes left)"), [])
        raise EndOfStream("stream ended on a frame boundary")

    def _poison(self, exc: ProtocolError, decoded: list[Message]) -> NoReturn:
        exc.decoded = decoded
        self._error = exc
        self._buf = bytearray()
        raise exc
