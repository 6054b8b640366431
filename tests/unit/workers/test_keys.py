"""corral's own Redis keys: hash tags, one cluster slot per queue/stream, and the retry-set inverse."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from corral.workers.jobs.keys import Keys, hash_tag

NAMES = st.text(alphabet=st.sampled_from("ab:{}-_*é"), min_size=1, max_size=12)


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("jobs", "jobs"),
        ("contest:submissions:{42}", "42"),
        ("{user1}:inbox", "user1"),
        ("a{b}c{d}", "b"),  # the first tag counts
        ("a{}b", "a{}b"),  # an empty tag: the whole name
        ("a{b", "a{b"),  # no closing brace: the whole name
        ("a}b{c}", "c"),  # a "}" before the first "{" does not close anything
        ("{}{x}", "{}{x}"),  # the first "{" has an empty tag: no tag at all (as Redis Cluster does)
        ("", ""),
    ],
)
def test_hash_tag_is_what_redis_cluster_hashes(name: str, tag: str) -> None:
    assert hash_tag(name) == tag
    assert key_slot(name.encode()) == key_slot(tag.encode())


@pytest.mark.parametrize("prefix", ["corral", "app:x"])
@pytest.mark.parametrize(
    "name", ["jobs", "q:a", "contest:submissions:{42}", "{user1}:inbox", "a{b}c}d", "a{b", "x}y", "{}z"]
)
def test_retry_key_round_trip(prefix: str, name: str) -> None:
    keys = Keys(prefix)
    key = keys.retry(name)
    assert keys.queue_of_retry(key) == name
    assert fnmatch.fnmatchcase(key, keys.retry_pattern())


@pytest.mark.parametrize(
    "name", ["jobs", "q:a", "contest:submissions:{42}", "{user1}:inbox", "a{b}c}d", "a{b"]
)
def test_bookkeeping_keys_share_the_cluster_slot_of_their_queue(name: str) -> None:
    keys = Keys()
    slot = key_slot(name.encode())
    owned = [
        keys.retry(name),
        keys.dead(name),
        keys.processing(name, "host:pool:0:abc"),
        keys.stream_dead(name),
    ]
    assert [key_slot(k.encode()) for k in owned] == [slot] * len(owned), owned


@given(NAMES)
def test_queue_of_retry_inverts_retry(name: str) -> None:
    keys = Keys()
    found = keys.queue_of_retry(keys.retry(name))
    assert found is not None
    assert keys.retry(found) == keys.retry(name)  # a name with exactly this retry set
    if "}" not in name or hash_tag(name) != name:
        assert found == name


@given(NAMES)
def test_co_location_holds_unless_the_name_has_no_tag_but_a_closing_brace(name: str) -> None:
    keys = Keys()
    if hash_tag(name) == name and "}" in name:
        return  # such a name cannot be a tag: Redis Cluster would end the tag at its first "}"
    assert key_slot(keys.retry(name).encode()) == key_slot(name.encode())


@pytest.mark.parametrize(
    "key",
    [
        "jobs",
        "corral:{jobs}:dead",
        "corral:{jobs}:processing:w1",
        "other:{jobs}:retry",
        "corral:jobs:retry",
        "corral:{pool:test}:members",
    ],
)
def test_queue_of_retry_rejects_other_keys(key: str) -> None:
    assert Keys().queue_of_retry(key) is None


def test_pool_keys_are_tagged_by_pool() -> None:
    keys = Keys("corral")
    assert keys.members("p") == "corral:{pool:p}:members"
    held = keys.held_queues("p", "h:p:0:abc")
    lock = keys.recovery_lock("p", "h:p:0:abc")
    assert key_slot(held.encode()) == key_slot(lock.encode()) == key_slot(keys.members("p").encode())
