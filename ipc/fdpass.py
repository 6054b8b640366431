"""Frames that carry open file descriptors: one msgpack map per frame (the ``frames`` header, then
the body), with any descriptors attached to the frame's first bytes (``SCM_RIGHTS``).

For a blocking, one-request-at-a-time conversation between two processes that must hand each
other sockets and pipes (the supervisor asking its zygote for a child). The async ``Channel`` is
for everything else.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack

from corral.ipc.errors import EndOfStream, FrameTooLarge, MalformedFrame
from corral.ipc.frames import HEADER, HEADER_BYTES

MAX_BYTES = 1024 * 1024  # a child spec is a few KiB; anything near this is a bug


def pack(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_BYTES:
        raise FrameTooLarge(len(body), MAX_BYTES)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedFrame(f"undecodable frame body: {type(exc).__name__}") from exc
    if not isinstance(message, dict):
        raise MalformedFrame(f"frame body is not a map: {type(message).__name__}")
    return message


def send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """Send one frame (and ``fds``, duplicated into the peer) on a blocking socket."""
    data = pack(message)
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """One frame and the descriptors that came with it, from a blocking socket; ``EndOfStream``
    when the peer closed between frames."""
    head, fds, _flags, _addr = (
        socket.recv_fds(sock, HEADER_BYTES, max_fds) if max_fds else (sock.recv(HEADER_BYTES), [], 0, None)
    )
    if not head:
        raise EndOfStream("peer closed")
    head += _exactly(sock, HEADER_BYTES - len(head))
    (length,) = HEADER.unpack(head)
    if length > MAX_BYTES:
        raise FrameTooLarge(length, MAX_BYTES)
    return unpack(_exactly(sock, length)), fds


async def arecv(sock: socket.socket) -> dict[str, Any]:
    """One frame from a non-blocking socket, on the running loop (no descriptors)."""
    loop = asyncio.get_running_loop()
    head = await _aexactly(loop, sock, HEADER_BYTES)
    (length,) = HEADER.unpack(head)
    if length > MAX_BYTES:
        raise FrameTooLarge(length, MAX_BYTES)
    return unpack(await _aexactly(loop, sock, length))


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise EndOfStream("peer closed inside a frame")
        chunks += chunk
    return bytes(chunks)


async def _aexactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = await loop.sock_recv(sock, n - len(chunks))
        if not chunk:
            raise EndOfStream("peer closed")
        chunks += chunk
    return bytes(chunks)
