"""Contest submissions: score each submission as it arrives, keep a per-contest scoreboard.

``app`` (the worker and the handler), ``scoring`` (answers, points, validation), ``db`` (SQLite or
PostgreSQL results), ``producer`` (pushing submissions), ``cli`` (``python -m
corral.entrypoints.contest``); README.md and corral.toml beside them.
"""

from corral.entrypoints.contest.app import ContestWorker, score_submission
from corral.entrypoints.contest.producer import asubmit, encode_submission, random_submission, submit
from corral.entrypoints.contest.scoring import (
    InvalidSubmission,
    Score,
    Submission,
    expected_answer,
    queue_name,
    score_answer,
)

__all__ = [
    "ContestWorker",
    "InvalidSubmission",
    "Score",
    "Submission",
    "asubmit",
    "encode_submission",
    "expected_answer",
    "queue_name",
    "random_submission",
    "score_answer",
    "score_submission",
    "submit",
]
