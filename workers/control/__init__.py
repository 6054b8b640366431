"""Job control: the state operators act on (pauses, rate limits, unique locks, schedules, dead
letters), kept in Redis and shared by every host; ``operations`` is what the CLI and the dashboard
call."""
