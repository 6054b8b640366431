"""Scoring a contest submission (the expected answer to a problem, points and partial credit) and
validating a submission."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from corral.workers.messages import Reject

QUEUE_PREFIX = "contest:submissions:"
ANSWER_LENGTH = 6
FULL_POINTS = 100
PARTIAL_POINTS_PER_CHAR = 8
MAX_ID_LENGTH = 200
MAX_ANSWER_LENGTH = 1000
ID_FIELDS = ("submission_id", "contest_id", "user_id", "problem_id")


@dataclass(frozen=True)
class Score:
    points: int
    solved: bool


def expected_answer(problem_id: str) -> str:
    """The answer to problem ``problem_id``: 6 hex digits, derived from its id alone."""
    return hashlib.sha256(f"contest-problem:{problem_id}".encode()).hexdigest()[:ANSWER_LENGTH]


def score_answer(problem_id: str, answer: str) -> Score:
    """Full points for the exact answer; partial credit per character in the right place."""
    expected = expected_answer(problem_id)
    given = answer.strip().lower()
    if given == expected:
        return Score(FULL_POINTS, True)
    if len(given) != ANSWER_LENGTH:
        return Score(0, False)
    right = sum(a == b for a, b in zip(given, expected, strict=True))
    return Score(right * PARTIAL_POINTS_PER_CHAR, False)


class InvalidSubmission(Reject):
    """A submission that can never be scored (missing or mistyped fields, wrong queue): corral
    dead-letters it with the reason instead of retrying."""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    contest_id: str
    user_id: str
    problem_id: str
    answer: str
    submitted_at: float

    @classmethod
    def from_json(cls, data: Any, queue: str | None = None) -> Submission:
        """Validate a decoded submission; ``queue``, if given, must be its contest's queue."""
        if not isinstance(data, dict):
            raise InvalidSubmission(f"a submission is a JSON object, got {type(data).__name__}")
        problems = [
            f"missing {name!r}" for name in (*ID_FIELDS, "answer", "submitted_at") if name not in data
        ]
        for name in ID_FIELDS:
            value = data.get(name, "-")
            if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
                problems.append(f"{name!r} must be a non-empty string of at most {MAX_ID_LENGTH} chars")
        answer = data.get("answer", "")
        if not isinstance(answer, str) or len(answer) > MAX_ANSWER_LENGTH:
            problems.append(f"'answer' must be a string of at most {MAX_ANSWER_LENGTH} chars")
        at = data.get("submitted_at", 0.0)
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            problems.append("'submitted_at' must be a number (unix seconds)")
        if problems:
            raise InvalidSubmission("invalid submission: " + "; ".join(problems))
        submission = cls(
            submission_id=data["submission_id"],
            contest_id=data["contest_id"],
            user_id=data["user_id"],
            problem_id=data["problem_id"],
            answer=data["answer"],
            submitted_at=float(data["submitted_at"]),
        )
        if queue is not None and queue != queue_name(submission.contest_id):
            raise InvalidSubmission(f"a submission to contest {submission.contest_id!r} arrived on {queue!r}")
        return submission


def queue_name(contest_id: str) -> str:
    return f"{QUEUE_PREFIX}{contest_id}"
