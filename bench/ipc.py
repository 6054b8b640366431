"""IPC benchmark: corral's ``Channel`` against a bare asyncio baseline, across a real child process.

    .venv/bin/python bench/ipc.py [--quick] [--rounds N] [--pin split|same|none] [--json PATH]
                                  [--update BENCHMARKS.md]

The script re-executes itself (``--child corral|raw --fd N``) as the peer, which inherits one end of
``ipc.socketpair()``. The baseline: an asyncio.Protocol on each side, same framing (4-byte big-endian
length + msgpack ``[2, id, "echo", data]``), no channel logic. Round trip: sequential requests, one in
flight. One-way: N sends, then a request answered once the child counted them all (frames are ordered);
both sides yield to the loop every ``per_iter`` sends and wait while the transport is paused.
Rounds alternate the implementations' order; latency samples are pooled, msg/s is the median round.
``--pin split`` (default): parent on CPU 0, children on CPU 1; ``same``: all on CPU 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# This file is bench/ipc.py: drop its directory from sys.path so `import ipc` finds the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # for `bench.*`

import msgpack  # noqa: E402
from loguru import logger  # noqa: E402

from bench.report import update_doc  # noqa: E402
from corral import ipc  # noqa: E402

HEADER = struct.Struct(">I")
SMALL: dict[str, Any] = {"job": "mail:4242", "queue": "default", "attempt": 1, "ok": True}
LARGE = bytes(range(256)) * 40  # 10 KiB of bin
# payload label -> (data, round trips, one-way messages, one-way sends per loop iteration); --quick: 1/10
PAYLOADS: dict[str, tuple[Any, int, int, int]] = {
    f"{len(msgpack.packb(SMALL))} B": (SMALL, 10_000, 200_000, 1000),
    f"{len(LARGE) // 1024} KiB": (LARGE, 4_000, 20_000, 50),
}
IMPLS = ("corral", "baseline")
Samples = dict[tuple[str, str], list[float]]  # (implementation, payload label) -> samples
Rows = dict[str, dict[str, float]]  # metric -> {"corral": x, "baseline": y, "ratio": x / y}


class Peer(Protocol):
    async def request(self, event: str, data: Any) -> Any: ...
    async def blast(self, data: Any, n: int, per_iter: int) -> None: ...


class CorralPeer:
    def __init__(self, channel: ipc.Channel) -> None:
        self.channel = channel

    async def request(self, event: str, data: Any) -> Any:
        return await self.channel.request(event, data)

    async def blast(self, data: Any, n: int, per_iter: int) -> None:
        send = self.channel.send
        for i in range(1, n + 1):
            send("tick", data)
            if i % per_iter == 0:
                await asyncio.sleep(0)  # end of this loop iteration: the channel flushes its batch
                await self.channel.drain()  # backpressure: waits while the transport is paused


async def corral_child(sock: socket.socket) -> None:
    channel = await ipc.Channel.open(sock, name="bench-child")
    count = 0

    def tick(_: Any) -> None:
        nonlocal count
        count += 1

    def take_count(_: Any) -> int:
        nonlocal count
        n, count = count, 0
        return n

    channel.on("echo", lambda data: data)
    channel.on("tick", tick)
    channel.on("count", take_count)
    channel.announce_ready()
    await channel.wait_closed()


def frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class RawProtocol(asyncio.Protocol):
    """Splits frames, decodes msgpack bodies, hands each message to a callback. Nothing else."""

    transport: asyncio.Transport

    def __init__(self, on_message: Callable[[list[Any]], None]) -> None:
        self.on_message = on_message
        self.buf = bytearray()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end_of_data = 0, len(buf)
        with memoryview(buf) as view:
            while end_of_data - pos >= 4:
                (size,) = HEADER.unpack_from(view, pos)
                end = pos + 4 + size
                if end > end_of_data:
                    break
                self.on_message(msgpack.unpackb(view[pos + 4 : end], raw=False))
                pos = end
        del buf[:pos]

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.lost.done():
            self.lost.set_result(None)


class RawPeer:
    def __init__(self) -> None:
        self.proto = RawProtocol(self._on_message)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.proto.lost.add_done_callback(self._fail_pending)

    def _on_message(self, msg: list[Any]) -> None:
        self.pending.pop(msg[1]).set_result(msg[2])  # only replies [3, id, data] come back

    def _fail_pending(self, _: asyncio.Future[None]) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("baseline child went away"))

    async def request(self, event: str, data: Any) -> Any:
        rid = next(self.ids)
        future = self.pending[rid] = asyncio.get_running_loop().create_future()
        self.proto.transport.write(frame([2, rid, event, data]))
        return await future

    async def blast(self, data: Any, n: int, per_iter: int) -> None:
        packer, pack_header = msgpack.Packer(use_bin_type=True), HEADER.pack
        batch: list[bytes] = []
        for i in range(1, n + 1):
            body = packer.pack([1, "tick", data])
            batch.append(pack_header(len(body)) + body)
            if i % per_iter == 0 or i == n:
                self.proto.transport.write(b"".join(batch))
                batch.clear()
                await asyncio.sleep(0)
                await self.proto.writable.wait()


async def raw_child(sock: socket.socket) -> None:
    count = 0

    def on_message(msg: list[Any]) -> None:
        nonlocal count
        if msg[0] == 1:
            count += 1
        elif msg[0] == 2:
            _, rid, event, data = msg
            if event == "count":
                data, count = count, 0
            proto.transport.write(frame([3, rid, data]))

    proto = RawProtocol(on_message)
    await asyncio.get_running_loop().create_unix_connection(lambda: proto, sock=sock)
    await proto.lost


async def round_trips(peer: Peer, data: Any, n: int) -> list[int]:
    for _ in range(max(200, n // 10)):  # warm-up
        await peer.request("echo", data)
    samples, clock = [], time.perf_counter_ns
    for _ in range(n):
        started = clock()
        reply = await peer.request("echo", data)
        samples.append(clock() - started)
    if reply != data:
        raise RuntimeError("echo returned different data")
    return samples


async def one_way(peer: Peer, data: Any, n: int, per_iter: int) -> float:
    await peer.blast(data, max(per_iter, n // 10), per_iter)  # warm-up
    await peer.request("count", None)  # resets the child's counter
    started = time.perf_counter_ns()
    await peer.blast(data, n, per_iter)
    received = await peer.request("count", None)
    elapsed = time.perf_counter_ns() - started
    if received != n:
        raise RuntimeError(f"child counted {received} messages, {n} were sent")
    return n * 1e9 / elapsed


async def run_parent(socks: dict[str, socket.socket], rounds: int, scale: int) -> tuple[Samples, Samples]:
    channel = await ipc.Channel.open(socks["corral"], name="bench-parent")
    await channel.wait_ready(10.0)
    raw = RawPeer()
    await asyncio.get_running_loop().create_unix_connection(lambda: raw.proto, sock=socks["raw"])
    peers: dict[str, Peer] = {"corral": CorralPeer(channel), "baseline": raw}
    rtt: Samples = {(name, label): [] for name in IMPLS for label in PAYLOADS}
    rate: Samples = {key: [] for key in rtt}
    for r in range(rounds):
        for name in IMPLS[:: 1 if r % 2 == 0 else -1]:
            for label, (data, n, _, _) in PAYLOADS.items():
                rtt[name, label] += await round_trips(peers[name], data, n // scale)
            for label, (data, _, n, per_iter) in PAYLOADS.items():
                rate[name, label].append(await one_way(peers[name], data, n // scale, per_iter))
    channel.close()
    raw.proto.transport.close()
    return rtt, rate


def summarize(rtt: Samples, rate: Samples) -> Rows:
    rows: Rows = {}
    for label in PAYLOADS:
        rows[f"round trip {label} median (us)"] = {n: statistics.median(rtt[n, label]) / 1e3 for n in IMPLS}
        p99 = {n: statistics.quantiles(rtt[n, label], n=100)[98] / 1e3 for n in IMPLS}
        rows[f"round trip {label} p99 (us)"] = p99
    for label in PAYLOADS:
        rows[f"one-way {label} (msg/s)"] = {n: statistics.median(rate[n, label]) for n in IMPLS}
    for row in rows.values():
        row["ratio"] = row["corral"] / row["baseline"]
    return rows


def report(rows: Rows, title: str) -> dict[str, bool]:
    targets = {
        f"round trip {label} median <= 1.5x baseline": rows[f"round trip {label} median (us)"]["ratio"] <= 1.5
        for label in PAYLOADS
    }
    small = next(iter(PAYLOADS))
    targets[f"one-way {small} >= 100k msg/s"] = rows[f"one-way {small} (msg/s)"]["corral"] >= 100_000
    print(title)
    print(f"{'metric':<32} | {'corral':>10} | {'baseline':>10} | {'ratio':>6}")
    print(f"{'-' * 32}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 6}")
    for metric, row in rows.items():
        fmt = ",.0f" if "msg/s" in metric else ".1f"
        print(f"{metric:<32} | {row['corral']:>10{fmt}} | {row['baseline']:>10{fmt}} | {row['ratio']:>5.2f}x")
    print("ratio = corral/baseline (latency: lower is better; msg/s: higher is better). Targets:")
    for target, met in targets.items():
        print(f"  [{'met' if met else 'MISSED'}] {target}")
    return targets


def spawn(kind: str, pin_mode: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    parent_end, child_end = ipc.socketpair()
    fd = child_end.fileno()
    argv = [sys.executable, __file__, "--child", kind, "--fd", str(fd), "--pin", pin_mode]
    try:
        return subprocess.Popen(argv, pass_fds=(fd,)), parent_end
    finally:
        child_end.close()


def reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            proc.wait(timeout=2)  # the child exits when its socket closes
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL to proc.pid
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, a tenth of the messages")
    parser.add_argument("--rounds", type=int, help="rounds per implementation (default 3, quick 1)")
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split", help="CPU placement")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--update", metavar="DOC", type=Path, help="write the table into DOC (BENCHMARKS.md)")
    parser.add_argument("--child", choices=("corral", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.pin != "none" and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1 if args.child and args.pin == "split" else 0})
    if args.child:
        sock = socket.socket(fileno=args.fd)
        asyncio.run(corral_child(sock) if args.child == "corral" else raw_child(sock))
        return
    rounds, scale = args.rounds or (1 if args.quick else 3), 10 if args.quick else 1
    procs: list[subprocess.Popen[bytes]] = []
    socks: dict[str, socket.socket] = {}
    try:
        for kind in ("corral", "raw"):
            proc, socks[kind] = spawn(kind, args.pin)
            procs.append(proc)
        rtt, rate = asyncio.run(run_parent(socks, rounds, scale))
    finally:
        for sock in socks.values():
            sock.close()
        for proc in procs:
            reap(proc)
    mode = "quick" if args.quick else "full"
    setup = f"{mode}, {rounds} round(s), pin={args.pin}, python {platform.python_version()}"
    targets = report(rows := summarize(rtt, rate), f"corral IPC bench ({setup}, {os.cpu_count()} CPUs)")
    if args.json:
        per_round = {f"{name} {label}": values for (name, label), values in rate.items()}
        result = {
            "setup": setup,
            "cpus": os.cpu_count(),
            "results": rows,
            "targets": targets,
            "one_way_msg_per_s_by_round": per_round,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.update:
        command = " ".join(["bench/ipc.py", *sys.argv[1:]])
        update_doc(args.update, f"ipc-{args.pin}", markdown(rows, targets, command, setup))


def markdown(rows: Rows, targets: dict[str, bool], command: str, setup: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = f"`{command}`, {when}: {setup}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}."
    lines = [head, "", "| metric | corral | baseline | ratio |", "|---|---:|---:|---:|"]
    for metric, row in rows.items():
        fmt = ",.0f" if "msg/s" in metric else ".1f"
        lines.append(f"| {metric} | {row['corral']:{fmt}} | {row['baseline']:{fmt}} | {row['ratio']:.2f}x |")
    lines += ["", "| target | result |", "|---|---|"]
    lines += [f"| {target} | {'PASS' if met else 'FAIL'} |" for target, met in targets.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
