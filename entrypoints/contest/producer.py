"""Producing submissions: onto the contest's queue (``contest:submissions:<contest_id>``), as plain JSON."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from corral.entrypoints.contest.scoring import ANSWER_LENGTH, Submission, expected_answer, queue_name


def random_submission(
    rng: random.Random, contest_ids: Sequence[str], users: Sequence[str], problems: Sequence[str]
) -> dict[str, Any]:
    """A plausible submission: 40% right, 35% close (partial credit), 25% a wild guess."""
    problem_id = rng.choice(problems)
    answer = expected_answer(problem_id)
    luck = rng.random()
    if luck >= 0.75:
        answer = "".join(rng.choice("0123456789abcdef") for _ in range(ANSWER_LENGTH))
    elif luck >= 0.40:
        chars = list(answer)
        for index in rng.sample(range(ANSWER_LENGTH), rng.randint(1, 4)):
            chars[index] = rng.choice("0123456789abcdef".replace(chars[index], ""))
        answer = "".join(chars)
    return asdict(
        Submission(
            submission_id=f"s-{rng.getrandbits(64):016x}",
            contest_id=rng.choice(contest_ids),
            user_id=rng.choice(users),
            problem_id=problem_id,
            answer=answer,
            submitted_at=round(time.time(), 3),
        )
    )


def encode_submission(submission: Mapping[str, Any]) -> str:
    return json.dumps(dict(submission), separators=(",", ":"))


def submit(redis_client: Any, submission: Mapping[str, Any]) -> str:
    """LPUSH a submission (plain JSON) onto its contest's queue; returns the queue. ``redis_client``
    is a redis-py ``Redis`` or a pipeline of one."""
    queue = queue_name(str(submission["contest_id"]))
    redis_client.lpush(queue, encode_submission(submission))
    return queue


async def asubmit(redis_client: Any, submission: Mapping[str, Any]) -> str:
    """``submit`` for a ``redis.asyncio.Redis`` client."""
    queue = queue_name(str(submission["contest_id"]))
    await redis_client.lpush(queue, encode_submission(submission))
    return queue
