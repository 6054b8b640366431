"""Trivia rooms: long-running, fenced room jobs whose progress lives in Redis (``app``); README.md and
corral.toml beside it."""

from corral.entrypoints.trivia.app import RoomListener, TriviaWorker, astart_room, run_room, start_room

__all__ = ["RoomListener", "TriviaWorker", "astart_room", "run_room", "start_room"]
