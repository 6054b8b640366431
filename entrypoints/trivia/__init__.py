"""Trivia rooms: long-running room jobs that resume from their checkpoint (``app``); README.md and
corral.toml beside it."""

from corral.entrypoints.trivia.app import RoomListener, TriviaWorker, astart_room, run_room, start_room

__all__ = ["RoomListener", "TriviaWorker", "astart_room", "run_room", "start_room"]
