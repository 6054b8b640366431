"""The matchmaker: game-server events (a partitioned stream) move games between pending, lobby and
active (``app``); corral.toml beside it."""

from corral.entrypoints.matchmaker.app import (
    GameEvent,
    MatchmakerWorker,
    asend_event,
    curate,
    handle_event,
    send_event,
)

__all__ = ["GameEvent", "MatchmakerWorker", "asend_event", "curate", "handle_event", "send_event"]
