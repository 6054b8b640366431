"""Which deployment a URL names, a Sentinel URL taken apart, and a sharded queue's lists."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from corral.contract import RedisSpec
from corral.workers.jobs.keys import Keys, hash_tag, queue_shards
from corral.workers.producer import queue_key, shard_of
from corral.workers.topology import BadRedisURL, Kind, SentinelTarget, kind_of_url, parse_sentinel_url


def test_sentinel_urls_are_taken_apart() -> None:
    assert parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster") == SentinelTarget(
        (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "mymaster"
    )
    target = parse_sentinel_url("redis+sentinel://:s%40cret@h:26379/svc/3")
    assert (target.password, target.db, target.service, target.sentinels) == (
        "s@cret",
        3,
        "svc",
        (("h", 26379),),
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",
        "redis+sentinel:///svc",
        "redis+sentinel://h/svc",
        "redis+sentinel://h:1/a/b",
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str) -> None:
    with pytest.raises(BadRedisURL, match=r"redis\+sentinel|host:port|database"):
        parse_sentinel_url(url)


def test_the_kind_of_deployment_from_the_url_and_settings() -> None:
    assert kind_of_url(RedisSpec(url="redis+sentinel://h:1/s")) is Kind.SENTINEL
    assert kind_of_url(RedisSpec(url="unix:///tmp/r.sock")) is Kind.STANDALONE
    assert kind_of_url(RedisSpec(url="redis://h:6379", cluster=True)) is Kind.CLUSTER
    assert kind_of_url(RedisSpec(url="redis://h:6379", cluster=False)) is Kind.STANDALONE
    assert kind_of_url(RedisSpec(url="redis://h:6379")) is None  # ask the server


@pytest.mark.parametrize("shards", [2, 3, 4, 8, 16])
def test_a_sharded_queue_has_one_list_in_each_slot_range(shards: int) -> None:
    names = queue_shards("jobs", shards)
    assert len(set(names)) == shards and names == queue_shards("jobs", shards)  # stable
    for i, name in enumerate(names):
        assert name.startswith("jobs{jobs#") and name.endswith("}")
        slot = key_slot(name.encode())
        assert i * 16384 // shards <= slot < (i + 1) * 16384 // shards, (name, slot)
        keys = Keys()  # its bookkeeping shares its slot
        assert {
            key_slot(k.encode()) for k in (keys.retry(name), keys.dead(name), keys.processing(name, "w"))
        } == {slot}
        assert hash_tag(name) == name[len("jobs{") : -1]


def test_producers_pick_a_shard_in_turn_or_by_key() -> None:
    names = queue_shards("jobs", 4)
    assert queue_key("jobs") == "jobs" and queue_key("jobs", 1, "k") == "jobs"
    assert {queue_key("jobs", 4) for _ in range(8)} == set(names)  # in turn: every shard
    assert queue_key("jobs", 4, "game-7") == names[shard_of("game-7", 4)]
    assert len({queue_key("jobs", 4, "game-7") for _ in range(5)}) == 1
