"""The operator's tools, on the Redis state every host shares: job control (pauses, rate limits,
unique locks, schedules; ``operations`` is what the CLI and the dashboard call), dead letters, the
audit of what is held by whom (``corral inspect``) and the pool across hosts (``fleet``). Used by
``entrypoints`` only: a child's runtime never imports them (``lint-imports``)."""
