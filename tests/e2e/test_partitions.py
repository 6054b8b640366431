"""Partitioned streams under the real CLI, on the embedded Redis: all events of one key are handled
in order, one worker at a time, across a rolling reload and a SIGKILLed child."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from corral.workers.producer import publish, shard_name, shard_of
from tests.e2e.conftest import Corral, wait_until

CONFIG = """
[pool]
name = "e2e"
workers = 3
graceful_timeout_s = 5
ready_timeout_s = 20
[paths]
state_dir = "run"
log_dir = "logs"
[[streams]]
stream = "games"
partitions = 8
handler = "tests.integration.workers.ordering_handlers:record_order"
block_ms = 100
"""
KEYS = [f"game-{i}" for i in range(20)]
EVENTS_PER_KEY = 60


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["embedded", "cluster", "sentinel"])
def test_events_of_one_key_stay_in_order_across_reload_and_kill(
    corral: Callable[..., Corral], request: pytest.FixtureRequest, where: str
) -> None:
    """On the embedded server, on a Valkey Cluster given by one node's URL (the 8 shards live on
    several primaries: a worker reads them slot by slot), and on a Sentinel-watched primary."""
    sup = corral(worker="corral.workers.base:BaseWorker", workers=3)
    client: Any
    if where == "cluster":
        cluster = request.getfixturevalue("valkey_cluster")
        cluster.heal()
        cluster.flushall()
        sup.config.write_text(CONFIG + f'[redis]\nurl = "{cluster.url}"\n')
        client = cluster.client()
        owners = {cluster.node_of(shard_name("games", shard)).port for shard in range(8)}
        assert len(owners) >= 2, "the shards should spread over the primaries"
    elif where == "sentinel":
        sentinels = request.getfixturevalue("valkey_sentinel")
        sentinels.heal()
        sentinels.flushall()
        sup.config.write_text(CONFIG + f'[redis]\nurl = "{sentinels.url}"\n')
        client = sentinels.client()
    else:
        sup.config.write_text(CONFIG)
        client = redis.Redis(unix_socket_path=str(sup.root / "run" / "redis.sock"), socket_timeout=5)
    sup.start()
    status = sup.wait_all_ready(3, timeout_s=20)
    if where == "embedded":
        assert status["redis_url"] == f"unix://{sup.root / 'run' / 'redis.sock'}"  # the default
    killed: list[int] = []
    for seq in range(EVENTS_PER_KEY):
        with client.pipeline(transaction=False) as pipe:
            for key in KEYS:
                publish(pipe, "games", {"key": key, "seq": str(seq)}, key=key, partitions=8)
            pipe.execute()
        if seq == 20:
            before_reload = {row["pid"] for row in sup.status()["slots"]}
            sup.send(signal.SIGHUP)
        if seq == 40:
            killed.append(kill_slot(sup, 1))

    def handled_everything() -> bool:
        return all(len(set(client.lrange(f"test:order:{k}", 0, -1))) == EVENTS_PER_KEY for k in KEYS)

    wait_until(handled_everything, timeout_s=30, what="every event handled")
    wait_until(lambda: "reload finished" in sup.log(), 30, what="the reload finished")
    after = {row["pid"] for row in sup.status()["slots"]}
    assert not before_reload & after and not set(killed) & after, "a fault did not happen"
    duplicates = 0
    for key in KEYS:
        seqs = [int(x) for x in client.lrange(f"test:order:{key}", 0, -1)]
        firsts: list[int] = []
        for seq in seqs:
            if seq not in firsts:
                firsts.append(seq)
        assert firsts == list(range(EVENTS_PER_KEY)), f"{key} out of order: {seqs}"
        duplicates += len(seqs) - len(firsts)
    # at least once: only what the killed child had in hand may be seen twice (its batch)
    assert duplicates <= 100
    # every shard's group ends with nothing pending
    for shard in range(8):
        assert client.xpending(shard_name("games", shard), "e2e")["pending"] == 0
    # the CLI's publish picks the same shard for a key as the library does
    result = sup.cli("publish", "games", '{"key": "game-3", "seq": "60"}', "--key", "game-3")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(client.lrange("test:order:game-3", 0, -1)) > EVENTS_PER_KEY, timeout_s=10)
    assert client.xlen(shard_name("games", shard_of("game-3", 8))) > EVENTS_PER_KEY

    # the figures are as last reported (every second): what the SIGKILLed child did since its last
    # report is not counted, and the whole run takes about a second, so only their presence is
    # checked here (exact counts: tests/e2e/test_metrics.py, with no kills)
    def reported() -> Any:
        work: Any = sup.status()["work"]["streams"].get("games", {})
        return work if work.get("processed", 0) > 0 else None

    assert wait_until(reported, timeout_s=10, what="the stream's figures in status")["dead"] == 0
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0


@pytest.mark.e2e
def test_a_reload_that_changes_partitions_moves_every_shard(corral: Callable[..., Corral]) -> None:
    """partitions 2 -> 4: the new shards get owners; a renamed stream is consumed, without a storm."""
    sup = corral(worker="corral.workers.base:BaseWorker", workers=2)
    sup.config.write_text(
        CONFIG.replace("workers = 3", "workers = 2").replace("partitions = 8", "partitions = 2")
    )
    sup.start()
    sup.wait_all_ready(2, timeout_s=20)
    sup.config.write_text(
        CONFIG.replace("workers = 3", "workers = 2").replace("partitions = 8", "partitions = 4")
    )
    assert sup.cli("reload").returncode == 0
    wait_until(lambda: "reload finished" in sup.log(), 30, what="the reload")
    client = redis.Redis(unix_socket_path=str(sup.root / "run" / "redis.sock"), socket_timeout=5)
    keys = [f"k{i}" for i in range(40)]
    assert {shard_of(k, 4) for k in keys} == {0, 1, 2, 3}
    for key in keys:
        publish(client, "games", {"key": key, "seq": "0"}, key=key, partitions=4)
    wait_until(lambda: all(client.llen(f"test:order:{k}") for k in keys), 20, what="every shard consumed")

    renamed = CONFIG.replace("workers = 3", "workers = 2").replace('stream = "games"', 'stream = "matches"')
    sup.config.write_text(renamed.replace("partitions = 8", "partitions = 4"))
    assert sup.cli("reload").returncode == 0
    wait_until(lambda: sup.log().count("reload finished") == 2, 30, what="the second reload")
    for key in keys:
        publish(client, "matches", {"key": key, "seq": "1"}, key=key, partitions=4)
    wait_until(lambda: all(client.llen(f"test:order:{k}") == 2 for k in keys), 20, what="the renamed stream")
    assert sup.log().count("partitions:") < 30, "the assigner looped"
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0


def kill_slot(sup: Corral, slot: int) -> int:
    """SIGKILL the slot's child; the one status names may have just exited (the reload in progress
    replaced it, a child is ready in ~15 ms): ask again."""
    deadline = time.monotonic() + 10
    while True:
        victim = sup.status()["slots"][slot]["pid"]
        try:
            os.kill(victim, signal.SIGKILL)
            return int(victim)
        except ProcessLookupError:
            if time.monotonic() > deadline:
                raise
