"""Raw redis-py loops: the baselines of the throughput bench, one worker process each.

    python bench/baselines.py queue|stream|stream-async REDIS_URL CONSUMER_NAME

queue:  the per-job reliable loop — BLMOVE queue -> own processing list, decode, a+b, INCR, LREM.
stream: XREADGROUP COUNT 100 (BLOCK 1 s), a+b and INCR for each entry, one XACK per batch.
stream-async: the same loop on redis.asyncio (the client corral's handlers get).

redis-py with its defaults, no error handling: the least a correct worker does. The process INCRs
``bench:ready`` once connected, then loops until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis
import redis.asyncio as aioredis

COUNTER = "bench:count"
READY = "bench:ready"
QUEUE = "bench:queue"
STREAM = "bench:stream"
GROUP = "bench"


def queue_loop(client: redis.Redis, name: str) -> None:
    processing = f"bench:processing:{name}"
    while True:
        raw = client.blmove(QUEUE, processing, 1, "RIGHT", "LEFT")
        if raw is None:
            continue
        data = json.loads(raw)["data"]
        _ = data["a"] + data["b"]
        client.incr(COUNTER)
        client.lrem(processing, -1, raw)


def stream_loop(client: redis.Redis, name: str) -> None:
    while True:
        reply = client.xreadgroup(GROUP, name, {STREAM: ">"}, count=100, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _entry_id, fields in entries:
            _ = int(fields[b"a"]) + int(fields[b"b"])
            client.incr(COUNTER)
        client.xack(STREAM, GROUP, *(entry_id for entry_id, _ in entries))


async def stream_loop_async(url: str, name: str) -> None:
    client = aioredis.from_url(url)
    await client.incr(READY)
    while True:
        reply = await client.xreadgroup(GROUP, name, {STREAM: ">"}, count=100, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _entry_id, fields in entries:
            _ = int(fields[b"a"]) + int(fields[b"b"])
            await client.incr(COUNTER)
        await client.xack(STREAM, GROUP, *(entry_id for entry_id, _ in entries))


def main() -> None:
    mode, url, name = sys.argv[1:4]
    if mode == "stream-async":
        asyncio.run(stream_loop_async(url, name))
        return
    client = redis.Redis.from_url(url)
    client.ping()
    client.incr(READY)
    (queue_loop if mode == "queue" else stream_loop)(client, name)


if __name__ == "__main__":
    main()
