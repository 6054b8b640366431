"""Match pairing: two queued players become one lobby, atomically, or nothing happens.

``app`` (the worker and its units), ``pairer`` (one pair through the Lua steps), ``lua`` (the
scripts and keys), ``model`` (tickets, outcomes, options), ``producer`` (joining, presence);
README.md (the design) and corral.toml beside them.
"""

from corral.entrypoints.pairing.app import LeaseUnit, PairingUnit, PairingWorker
from corral.entrypoints.pairing.model import Outcome, PairingOptions, Ticket
from corral.entrypoints.pairing.pairer import Pairer
from corral.entrypoints.pairing.producer import aheartbeat, ajoin, heartbeat, join, new_ticket

__all__ = [
    "LeaseUnit",
    "Outcome",
    "Pairer",
    "PairingOptions",
    "PairingUnit",
    "PairingWorker",
    "Ticket",
    "aheartbeat",
    "ajoin",
    "heartbeat",
    "join",
    "new_ticket",
]
