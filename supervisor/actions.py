"""What the supervisor can be asked to do (by a signal or over the control socket), and its states.

Signal handlers and control requests only enqueue an ``Action``; the supervisor's loop takes them
one at a time, each with one handler.
"""

from __future__ import annotations

import signal
from enum import IntEnum, StrEnum


class Action(StrEnum):
    STOP = "stop"  # graceful stop (TERM, INT); again: skip ahead on the stop ladder
    QUIT = "quit"  # fast stop (QUIT): in-flight work handed back
    RELOAD = "reload"  # rolling reload with the config re-read (HUP)
    SCALE_UP = "scale_up"  # one slot more (TTIN)
    SCALE_DOWN = "scale_down"  # one slot fewer (TTOU)
    SCALE = "scale"  # to N slots (control socket)
    REOPEN = "reopen"  # reopen every log file (USR1)
    RECYCLE = "recycle"  # replace one slot's child, its replacement ready first (control socket)


SIGNAL_ACTIONS = {
    signal.SIGTERM: Action.STOP,
    signal.SIGINT: Action.STOP,
    signal.SIGQUIT: Action.QUIT,
    signal.SIGHUP: Action.RELOAD,
    signal.SIGTTIN: Action.SCALE_UP,
    signal.SIGTTOU: Action.SCALE_DOWN,
    signal.SIGUSR1: Action.REOPEN,
}


class SupervisorState(StrEnum):
    STARTING = "starting"  # until every slot was ready once
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


class SupervisorExit(IntEnum):
    """Exit codes of ``corral run`` and of the CLI's control commands."""

    OK = 0
    FAILED = 1  # (CLI) the command failed: no such log file, stop timed out, a child answered an error
    CONFIG = 2  # the configuration (or the command line) is invalid: nothing was started
    ALL_FATAL = 3  # every slot went fatal: systemd's Restart=on-failure may try again
    ALREADY_RUNNING = 4  # another supervisor owns this state dir
    NOT_RUNNING = 5  # (CLI) no supervisor answers on the control socket
