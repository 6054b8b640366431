"""Unit tests of the frame codec (``corral.ipc.frames``): no I/O, no event loop."""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.ipc import (
    EncodeError,
    EndOfStream,
    FrameDecoder,
    FrameEncoder,
    FrameTooLarge,
    IPCError,
    MalformedFrame,
    ProtocolError,
    TruncatedFrame,
)
from corral.ipc.frames import HEADER, HEADER_BYTES, Error, Message, Ping, Pong, Ready, Reply, Request, Send

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)

SAMPLE_MESSAGES: list[Message] = [
    Ready(None),
    Ready({"pid": 1234, "slot": 3, "tags": ["a", "b"]}),
    Send("tick", None),
    Send("job.done", {"id": b"\x00\xff", "ok": True, "took": 0.25, "n": -7}),
    Request(1, "echo", [1, 2.5, "three", b"four", None, False, {"five": [6]}]),
    Request(UINT64_MAX, "", ""),
    Reply(0, None),
    Reply(42, {1: "int key", b"k": "bytes key", None: "nil key"}),
    Error(7, "ValueError", "bad value"),
    Error(8, "pkg.mod.Custom", "ünïcødé ✓ \U0001f600"),
    Ping(0),
    Ping(UINT64_MAX),
    Pong(123456789),
]


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def encode_all(messages: list[Message], encoder: FrameEncoder | None = None) -> bytes:
    encoder = encoder or FrameEncoder()
    return b"".join(encoder.encode(m) for m in messages)


def same(a: Any, b: Any) -> bool:
    """Structural equality that also compares types (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


def decode_in_chunks(data: bytes, sizes: list[int], decoder: FrameDecoder | None = None) -> list[Message]:
    decoder = decoder or FrameDecoder()
    out: list[Message] = []
    pos = 0
    for size in sizes:
        out += decoder.feed(data[pos : pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    return out


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips(message: Message) -> None:
    decoder = FrameDecoder()
    [decoded] = decoder.feed(FrameEncoder().encode(message))
    assert type(decoded) is type(message)
    assert same(tuple(decoded), tuple(message))
    assert decoder.buffered_bytes == 0
    with pytest.raises(EndOfStream):
        decoder.eof()


def test_frame_layout_is_length_prefix_plus_msgpack_array() -> None:
    data = FrameEncoder().encode(Request(5, "echo", [1, "x"]))
    (size,) = HEADER.unpack_from(data)
    assert size == len(data) - HEADER_BYTES
    assert msgpack.unpackb(data[HEADER_BYTES:]) == [2, 5, "echo", [1, "x"]]


def test_one_byte_at_a_time() -> None:
    data = encode_all(SAMPLE_MESSAGES)
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == SAMPLE_MESSAGES
    assert decoder.buffered_bytes == 0


def test_every_fixed_chunk_size() -> None:
    data = encode_all(SAMPLE_MESSAGES)
    for size in range(1, len(data) + 2):
        decoder = FrameDecoder()
        out: list[Message] = []
        for pos in range(0, len(data), size):
            out += decoder.feed(data[pos : pos + size])
        assert out == SAMPLE_MESSAGES, size
        with pytest.raises(EndOfStream):
            decoder.eof()


def test_random_splits_and_buffer_types() -> None:
    data = encode_all(SAMPLE_MESSAGES * 3)
    rng = random.Random(20240601)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        bounds = [0, *cuts, len(data)]
        wrap = rng.choice([bytes, bytearray, memoryview])
        decoder = FrameDecoder()
        out: list[Message] = []
        for lo, hi in itertools.pairwise(bounds):
            out += decoder.feed(wrap(data[lo:hi]))
        assert out == SAMPLE_MESSAGES * 3


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    data = FrameEncoder().encode(Ping(1))
    assert decoder.feed(data[:2]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(data[2:]) == [Ping(1)]


def test_feed_does_not_keep_a_reference_to_the_callers_buffer() -> None:
    """Like a BufferedProtocol: every chunk is a view of one reused buffer, overwritten after feed."""
    messages = [Send("a", "x" * 50), Send("b", b"y" * 300), Reply(3, {"k": [1, 2]}), Ping(4)]
    data = encode_all(messages * 5)
    rng = random.Random(7)
    for _ in range(100):
        shared = bytearray(64)
        decoder = FrameDecoder()
        out: list[Message] = []
        pos = 0
        while pos < len(data):
            n = rng.randint(1, len(shared))
            chunk = data[pos : pos + n]
            shared[: len(chunk)] = chunk
            out += decoder.feed(memoryview(shared)[: len(chunk)])
            shared[:] = b"\xff" * len(shared)  # the next read overwrites the buffer
            pos += n
        assert out == messages * 5
        assert decoder.buffered_bytes == 0


# -- sizes -------------------------------------------------------------------------------------


def test_header_announcing_an_oversized_frame_fails_at_once() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(HEADER.pack(101))  # no body needed: the header alone is enough
    assert info.value.size == 101
    assert info.value.max_frame_bytes == 100
    assert isinstance(info.value, ProtocolError)


def test_huge_header_with_default_limit() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff" + b"junk")


def test_frame_of_exactly_the_maximum_size_is_accepted() -> None:
    limit = 1000
    overhead = len(FrameEncoder().encode(Send("e", b"x" * 300))) - HEADER_BYTES - 300  # bin16 header
    message = Send("e", b"x" * (limit - overhead))
    data = FrameEncoder(max_frame_bytes=limit).encode(message)
    assert len(data) - HEADER_BYTES == limit
    assert FrameDecoder(max_frame_bytes=limit).feed(data) == [message]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_bytes=limit - 1).feed(data)


def test_encoder_refuses_an_oversized_frame_and_stays_usable() -> None:
    encoder = FrameEncoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        encoder.encode(Send("e", b"x" * 200))
    assert info.value.size > 100
    assert info.value.max_frame_bytes == 100
    assert FrameDecoder().feed(encoder.encode(Send("e", b"ok"))) == [Send("e", b"ok")]


# -- malformed frames --------------------------------------------------------------------------

MALFORMED_BODIES: dict[str, bytes] = {
    "empty body": b"",
    "never-used msgpack byte": b"\xc1",
    "truncated msgpack": msgpack.packb([1, "event", "abcdef"])[:-2],
    "trailing bytes": msgpack.packb([5, 1]) + b"\x00",
    "not an array: int": msgpack.packb(5),
    "not an array: map": msgpack.packb({"kind": 1}),
    "not an array: str": msgpack.packb("ready"),
    "empty array": msgpack.packb([]),
    "unknown kind 7": msgpack.packb([7, 1]),
    "unknown kind -1": msgpack.packb([-1, 1]),
    "kind is a string": msgpack.packb(["0", None]),
    "kind is a bool": msgpack.packb([True, None]),
    "kind is a float": msgpack.packb([1.0, "e", None]),
    "kind is nil": msgpack.packb([None, None]),
    "ready without info": msgpack.packb([0]),
    "ready with two fields": msgpack.packb([0, 1, 2]),
    "send with one field": msgpack.packb([1, "e"]),
    "request with two fields": msgpack.packb([2, 1, "e"]),
    "reply with three fields": msgpack.packb([3, 1, None, None]),
    "error with two fields": msgpack.packb([4, 1, "T"]),
    "ping without nonce": msgpack.packb([5]),
    "pong with two nonces": msgpack.packb([6, 1, 2]),
    "send: event is an int": msgpack.packb([1, 5, None]),
    "send: event is bin": msgpack.packb([1, b"event", None], use_bin_type=True),
    "request: id is a string": msgpack.packb([2, "1", "e", None]),
    "request: id is a float": msgpack.packb([2, 1.0, "e", None]),
    "request: id is nil": msgpack.packb([2, None, "e", None]),
    "request: event is nil": msgpack.packb([2, 1, None, None]),
    "error: type is an int": msgpack.packb([4, 1, 2, "m"]),
    "error: message is bin": msgpack.packb([4, 1, "T", b"m"], use_bin_type=True),
    "ping: nonce is a list": msgpack.packb([5, [1]]),
    "request: negative id": msgpack.packb([2, -1, "e", None]),
    "reply: negative id": msgpack.packb([3, -5, None]),
    "error: negative id": msgpack.packb([4, INT64_MIN, "T", "m"]),
    "ping: negative nonce": msgpack.packb([5, -1]),
    "request: bool id": msgpack.packb([2, True, "e", None]),
    "reply: bool id": msgpack.packb([3, False, None]),
    "pong: bool nonce": msgpack.packb([6, True]),
    # fixarray(3), kind 1, fixstr(2) holding invalid UTF-8, nil
    "invalid utf-8 event": b"\x93\x01\xa2\xff\xfe\xc0",
    "invalid utf-8 in data": b"\x93\x01\xa1e\xa2\xc3\x28",
    "unhashable map key": b"\x93\x01\xa1e\x81\x91\x01\x02",  # {[1]: 2}
    "deeply nested data": b"\x93\x01\xa1e" + b"\x91" * 2000 + b"\xc0",
    "nesting just under the unpacker's limit": b"\x92" + b"\x91" * 1000 + b"\xc0" + b"\xc0",
    "nested id just under the unpacker's limit": b"\x92\x05" + b"\x91" * 1000 + b"\xc0",
    "deeply nested then trailing bytes": b"\x91" * 1000 + b"\xc0" + b"\x00",
    "big body then trailing bytes": msgpack.packb([1, "e", b"x" * 5000]) + b"\x00",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_body(body: bytes) -> None:
    decoder = FrameDecoder()
    good = FrameEncoder().encode(Ping(9))
    with pytest.raises(MalformedFrame) as info:
        decoder.feed(good + frame(body) + good)
    assert not isinstance(info.value, TruncatedFrame)
    assert info.value.decoded == [Ping(9)]  # what preceded the bad frame in that chunk
    assert len(str(info.value)) < 1000
    # poisoned: the same error again, whatever comes next
    with pytest.raises(MalformedFrame) as again:
        decoder.feed(good)
    assert again.value is info.value
    with pytest.raises(MalformedFrame):
        decoder.eof()


def test_malformed_frame_after_a_split_header() -> None:
    data = frame(b"\xc1")
    decoder = FrameDecoder()
    assert decoder.feed(data[:3]) == []
    with pytest.raises(MalformedFrame):
        decoder.feed(data[3:])


# -- end of stream -----------------------------------------------------------------------------


def test_eof_on_a_boundary() -> None:
    decoder = FrameDecoder()
    with pytest.raises(EndOfStream):
        decoder.eof()
    decoder = FrameDecoder()
    assert decoder.feed(encode_all(SAMPLE_MESSAGES)) == SAMPLE_MESSAGES
    with pytest.raises(EndOfStream) as info:
        decoder.eof()
    assert not isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("cut", [1, 3, 4, 5, -1], ids=lambda c: f"cut={c}")
def test_eof_mid_frame(cut: int) -> None:
    data = FrameEncoder().encode(Send("event", "payload"))
    decoder = FrameDecoder()
    assert decoder.feed(data[:cut]) == []
    with pytest.raises(TruncatedFrame) as info:
        decoder.eof()
    assert isinstance(info.value, MalformedFrame)
    assert info.value.decoded == []
    with pytest.raises(TruncatedFrame):
        decoder.eof()
    with pytest.raises(TruncatedFrame):
        decoder.feed(data[cut:])


def test_poisoned_by_oversized_frame_keeps_raising() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(HEADER.pack(11))
    for action in (lambda: decoder.feed(b""), lambda: decoder.feed(frame(b"\x91\x05")), decoder.eof):
        with pytest.raises(FrameTooLarge) as again:
            action()
        assert again.value is info.value
    assert decoder.buffered_bytes == 0


# -- encoding errors ---------------------------------------------------------------------------


class Opaque:
    pass


UNENCODABLE: dict[str, Any] = {
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "object": Opaque(),
    "int above uint64": 2**64,
    "int below int64": INT64_MIN - 1,
    "complex": 1j,
    "set nested in a map": {"a": [1, {2}]},
    "function": len,
}


@pytest.mark.parametrize("data", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_unencodable_data(data: Any) -> None:
    encoder = FrameEncoder()
    for message in (Send("e", data), Request(1, "e", data), Reply(1, data), Ready(data)):
        with pytest.raises(EncodeError) as info:
            encoder.encode(message)
        assert isinstance(info.value, TypeError)
        assert isinstance(info.value, IPCError)
    # no half-packed leftovers leak into the next frame
    assert FrameDecoder().feed(encoder.encode(Send("e", [1, 2]))) == [Send("e", [1, 2])]


def test_integer_limits_encode() -> None:
    messages: list[Message] = [Send("e", UINT64_MAX), Send("e", INT64_MIN), Request(UINT64_MAX, "e", 0)]
    assert FrameDecoder().feed(encode_all(messages)) == messages


def test_no_pickle_on_the_wire() -> None:
    with pytest.raises(EncodeError):
        FrameEncoder().encode(Send("e", Opaque()))
    # a pickle payload is just bytes: it is carried, never unpickled
    blob = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."
    assert FrameDecoder().feed(FrameEncoder().encode(Send("e", blob))) == [Send("e", blob)]


# -- property-based ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=UINT64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
hashable = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
msgpack_data = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(hashable, children, max_size=5),
    max_leaves=20,
)
ids = st.integers(min_value=0, max_value=UINT64_MAX)
names = st.text(max_size=12)
messages = st.one_of(
    st.builds(Ready, msgpack_data),
    st.builds(Send, names, msgpack_data),
    st.builds(Request, ids, names, msgpack_data),
    st.builds(Reply, ids, msgpack_data),
    st.builds(Error, ids, names, st.text(max_size=40)),
    st.builds(Ping, ids),
    st.builds(Pong, ids),
)


def split_points(data: st.DataObject, length: int) -> list[int]:
    """Chunk sizes that add up to at most ``length`` (the rest goes in a last chunk)."""
    sizes: list[int] = data.draw(st.lists(st.integers(min_value=0, max_value=max(length, 1)), max_size=12))
    return sizes


# a stream segment: a valid frame, a well-sized frame around random bytes or msgpack, or raw junk
segments = st.one_of(
    messages.map(lambda m: FrameEncoder().encode(m)),
    st.binary(max_size=40).map(frame),
    msgpack_data.map(lambda d: frame(msgpack.packb(d, use_bin_type=True))),
    st.lists(msgpack_data, min_size=1, max_size=5).map(lambda d: frame(msgpack.packb(d, use_bin_type=True))),
    st.integers(0, 10).flatmap(
        lambda k: st.lists(st.just(None), max_size=4).map(lambda f: frame(msgpack.packb([k, *f])))
    ),
    st.binary(max_size=12),
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(chunks=st.lists(segments, max_size=8), data=st.data())
def test_arbitrary_bytes_only_yield_messages_or_protocol_errors(
    chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(chunks)
    decoder = FrameDecoder(max_frame_bytes=data.draw(st.sampled_from([16, 64, 4096, 16 * 1024 * 1024])))
    pos = 0
    error: ProtocolError | None = None
    try:
        for size in [*split_points(data, len(stream)), len(stream)]:
            for message in decoder.feed(stream[pos : pos + size]):
                assert isinstance(message, Ready | Send | Request | Reply | Error | Ping | Pong)
            pos += size
        decoder.eof()
    except ProtocolError as exc:
        error = exc
    except EndOfStream:
        return
    assert error is not None
    # poisoned: keeps raising the same error
    with pytest.raises(ProtocolError) as again:
        decoder.feed(b"\x00\x00\x00\x01\xc0")
    assert again.value is error


@FAST
@given(message_list=st.lists(messages, max_size=6), data=st.data())
def test_truncated_streams(message_list: list[Message], data: st.DataObject) -> None:
    frames = [FrameEncoder().encode(m) for m in message_list]
    stream = b"".join(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    boundaries = [0]
    for f in frames:
        boundaries.append(boundaries[-1] + len(f))
    whole = [m for m, end in zip(message_list, boundaries[1:], strict=True) if end <= cut]

    decoder = FrameDecoder()
    out = decode_in_chunks(stream[:cut], split_points(data, cut), decoder)
    assert out == whole
    expected = EndOfStream if cut in boundaries else TruncatedFrame
    with pytest.raises(expected):
        decoder.eof()


@FAST
@given(value=msgpack_data, data=st.data())
def test_msgpack_data_round_trips_exactly(value: Any, data: st.DataObject) -> None:
    encoded = encode_all([Send("e", value), Reply(1, value), Ready(value)])
    out = decode_in_chunks(encoded, split_points(data, len(encoded)))
    assert len(out) == 3
    for message in out:
        assert same(message[-1], value)


@FAST
@given(message_list=st.lists(messages, min_size=1, max_size=10), data=st.data())
def test_message_lists_round_trip_in_random_chunks(message_list: list[Message], data: st.DataObject) -> None:
    encoded = encode_all(message_list)
    out = decode_in_chunks(encoded, split_points(data, len(encoded)))
    assert len(out) == len(message_list)
    for got, sent in zip(out, message_list, strict=True):
        assert type(got) is type(sent)
        assert same(tuple(got), tuple(sent))
