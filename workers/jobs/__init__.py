"""The job's Redis protocol, in one room: where every key is (``keys``), what a job is on the wire
(``wire``), and every script that moves one (``scripts``). The producer (``corral.workers.producer``),
the consumers, the scheduler and the operator's tools (``corral.workers.ops``) all use these.

A queue job's states, and the scripts that move it (each one atomic, within the queue's hash tag)::

    producer ── LPUSH / ENQUEUE_UNIQUE ──▶ queue list ◀── PROMOTE (when due) ── delayed set (ZADD)
                 FIRE (a schedule's tick) ─▶   │  ▲  ▲
                                        TAKE / │  │  └── PROMOTE (when due) ── retry set
                                        BLMOVE │  │ SETTLE front/back (Requeue), RECOVER (its
                                               ▼  │ worker died or was fenced), MOVE_ALL (put back)
                         processing list <queue>:processing:<worker id>   ◀── CHECKPOINT (in place)
                           │ ACK          │ SETTLE retry       │ SETTLE dead
                           ▼              ▼                    ▼
                         done         retry set            dead list ── RETRY_JOB ──▶ queue list

A unique job's lock (``…:unique:<key>``) is taken with its push and released with its ack or dead
letter (``RELEASE``); the deaths of workers that held a job are counted beside the queue
(``…:deaths``, by ``RECOVER``). A stream entry moves by the server's own commands (XREADGROUP, XACK,
XAUTOCLAIM); its dead letters come back with ``RETRY_ENTRY``.
"""
