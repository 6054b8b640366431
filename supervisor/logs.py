"""Log files: ``<log_dir>/supervisor.log`` and one ``<log_dir>/worker-<slot>.log`` per slot.

The supervisor is the only writer of every file: a child's log lines (and anything else it prints
to stdout/stderr, such as a traceback before its logging was set up, or a faulthandler dump) arrive
through its output pipe and are written line by line into its slot's file by a loguru sink with
size rotation and retention. ``reopen()`` (SIGUSR1) closes and reopens every file for logrotate.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from corral.supervisor.config import ConfigError, LogSettings
from corral.supervisor.settings import OutputSink

SUPERVISOR_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | supervisor | {name}:{function}:{line} - {message}"
)
RAW_KEY = "corral_slot_output"


def _not_raw(record: Any) -> bool:
    return RAW_KEY not in record["extra"]


class LogManager:
    def __init__(self, log_dir: Path, settings: LogSettings) -> None:
        self.log_dir = log_dir
        self.settings = settings
        self._supervisor_sinks: list[int] = []
        self._slot_sinks: dict[int | str, int] = {}

    def start(self) -> None:
        """Route the supervisor's own logging; raises ConfigError if rotation/retention are invalid."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logger.remove()
        if self.settings.stderr:
            self._supervisor_sinks.append(
                logger.add(sys.stderr, level=self.settings.level, format=SUPERVISOR_FORMAT, filter=_not_raw)
            )
        self._supervisor_sinks.append(self._add_file(self.log_dir / "supervisor.log", _not_raw, raw=False))

    def path_of(self, slot: int | str) -> Path:
        return self.log_dir / (f"worker-{slot}.log" if isinstance(slot, int) else f"{slot}.log")

    def output_sink(self, slot: int | str) -> OutputSink:
        """A writer for one child's output pipe: complete lines go to the slot's file.

        Call it with ``b""`` when the pipe is closed, to write a last unterminated line."""
        if slot not in self._slot_sinks:
            self._slot_sinks[slot] = self._add_slot_file(slot)
        raw = logger.bind(**{RAW_KEY: slot}).opt(raw=True)
        pending = bytearray()
        as_json = self.settings.json

        def write(data: bytes) -> None:
            pending.extend(data if data else b"\n" if pending else b"")
            end = pending.rfind(b"\n") + 1
            if not end:
                return
            text = pending[:end].decode("utf-8", "replace")
            del pending[:end]
            raw.log("INFO", _wrap_stray_lines(text, slot) if as_json else text)

        return write

    def reopen(self) -> None:
        """Close and reopen every log file (after logrotate moved them away)."""
        for sink_id in self._supervisor_sinks[-1:]:
            logger.remove(sink_id)
        self._supervisor_sinks[-1:] = [self._add_file(self.log_dir / "supervisor.log", _not_raw, raw=False)]
        for slot, sink_id in list(self._slot_sinks.items()):
            logger.remove(sink_id)
            self._slot_sinks[slot] = self._add_slot_file(slot)
        logger.info("log files reopened")

    def close(self) -> None:
        for sink_id in [*self._supervisor_sinks, *self._slot_sinks.values()]:
            logger.remove(sink_id)
        self._supervisor_sinks.clear()
        self._slot_sinks.clear()

    def _add_slot_file(self, slot: int | str) -> int:
        return self._add_file(self.path_of(slot), lambda r: r["extra"].get(RAW_KEY) == slot, raw=True)

    def _add_file(self, path: Path, filter_: Any, raw: bool) -> int:
        options: dict[str, Any] = (
            {"format": "{message}"}
            if raw
            else {
                "format": SUPERVISOR_FORMAT,
                "serialize": self.settings.json,
            }
        )
        try:
            sink_id: int = logger.add(
                path,
                level=0 if raw else self.settings.level,
                filter=filter_,
                rotation=self.settings.rotation,
                retention=self.settings.retention,
                encoding="utf-8",
                **options,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"logging: {exc}") from None
        return sink_id


def _wrap_stray_lines(text: str, slot: int | str) -> str:
    """JSON mode: a line that is not a JSON log record (a traceback, a print) becomes one."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(line)
            continue
        now = datetime.now(UTC).isoformat()
        record = {
            "text": line + "\n",
            "record": {
                "message": line,
                "time": {"repr": now},
                "level": {"name": "INFO"},
                "extra": {"slot": slot, "stray": True},
            },
        }
        out.append(json.dumps(record))
    return "\n".join(out) + "\n"
