"""Reading TOML tables into dataclasses: every key checked against its field's type and ``Check``.

One path for every table of ``corral.toml``: a key is a dataclass field (its default is the only
place the default is written), its type comes from the annotation, its constraint from the field's
``setting(..., check)`` metadata (``corral.contract.Check``); every number must be >= 0 unless it
says more. Errors are collected, not raised, each naming its key (``pool.workers: must be an int,
got 'four'``), so that all problems are reported at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from corral.contract import Check, parse_rate

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
SCHEMES = ", ".join(URL_SCHEMES)


def keys_of(cls: type[Any], table: str = "") -> dict[str, dataclasses.Field[Any]]:
    """The fields of ``cls`` that are keys of ``table`` (all of them when ``table`` is empty)."""
    return {
        f.name: f
        for f in dataclasses.fields(cls)
        if f.init and (not table or f.metadata.get("table") == table)
    }


def read(
    cls: type[Any], data: dict[str, Any], where: str, errors: list[str], table: str = ""
) -> dict[str, Any]:
    """The valid values in ``data`` for the fields of ``cls`` (of ``table``), as keyword arguments;
    a problem with a key (wrong type, failed check, missing required) is appended to ``errors``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec_field in keys_of(cls, table).items():
        if name not in data:
            if (
                spec_field.default is dataclasses.MISSING
                and spec_field.default_factory is dataclasses.MISSING
            ):
                errors.append(f"{where}.{name}: required")
            continue
        ok, value = coerce(data[name], hints[name])
        problem = None if ok else f"must be {describe(hints[name])}"
        problem = problem or check(value, spec_field.metadata.get("check"))
        if problem:
            errors.append(f"{where}.{name}: {problem}, got {data[name]!r}")
        else:
            values[name] = value
    return values


def build(cls: type[Any], data: Any, where: str, errors: list[str]) -> Any:
    """``cls`` built from a whole table (unknown keys are errors), or None if anything was wrong."""
    if not isinstance(data, dict):
        errors.append(f"{where}: must be a table")
        return None
    before = len(errors)
    unknown_keys(data, set(keys_of(cls)), where, errors)
    values = read(cls, data, where, errors)
    return cls(**values) if len(errors) == before else None


def unknown_keys(data: dict[str, Any], known: set[str], where: str, errors: list[str]) -> None:
    errors.extend(f"{where}.{key}: unknown key{did_you_mean(key, known)}" for key in data if key not in known)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'workers'?)`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value) for a TOML value against a type hint (an int is a valid float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, coerced = coerce(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is tuple:
        item = args[0] if args else str
        ok = isinstance(value, list) and all(type(v) is item for v in value)
        return ok, tuple(value) if ok else value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    if hint is float and type(value) in (int, float):
        return True, float(value)
    return type(value) is hint, value


def describe(hint: Any) -> str:
    """``an int``, ``a float or a str``, ``a list of strings``."""
    if typing.get_origin(hint) is tuple:
        return "a list of integers" if typing.get_args(hint)[:1] == (int,) else "a list of strings"
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    names = [a.__name__ for a in args]
    text = " or ".join(f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in names)
    return text


def _rate(value: str) -> str | None:
    try:
        parse_rate(value)
    except ValueError:
        return f"must be {Check.RATE.value}"
    return None


def _cron(value: str) -> str | None:
    try:
        CronSim(value, datetime.now(UTC))
    except CronSimError as exc:
        return f"must be {Check.CRON.value} ({exc})"
    return None


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"must be {Check.TIMEZONE.value}"
    return None


def _chars(allowed: str, rule: Check) -> Any:
    return lambda v: None if v and all(c.isalnum() or c in allowed for c in v) else f"must be {rule.value}"


def _import_path(value: str) -> str | None:
    module, sep, attr = value.partition(":")
    return None if sep and module and attr else f"must be {Check.IMPORT_PATH.value}"


SPECIAL: dict[Check, Any] = {
    Check.KEY: lambda v: None if v else f"must be {Check.KEY.value}",
    Check.KEY_PREFIX: _chars("-_:.", Check.KEY_PREFIX),
    Check.NAME: _chars("-_.", Check.NAME),
    Check.IMPORT_PATH: _import_path,
    Check.REDIS_URL: lambda v: (
        None if v.startswith(URL_SCHEMES) else f"must start with one of {', '.join(URL_SCHEMES)}"
    ),
    Check.LOG_LEVEL: lambda v: None if v.upper() in LEVELS else f"must be one of {', '.join(LEVELS)}",
    Check.RATE: _rate,
    Check.CRON: _cron,
    Check.TIMEZONE: _timezone,
    Check.ORDER: lambda v: None if v in ("rotate", "strict", "weighted") else f"must be {Check.ORDER.value}",
    Check.CATCH_UP: lambda v: None if v in ("skip", "once", "all") else f"must be {Check.CATCH_UP.value}",
    Check.SPAWN: lambda v: None if v in ("zygote", "exec") else f"must be {Check.SPAWN.value}",
}


def check(value: Any, rule: Check | None) -> str | None:
    """What is wrong with an already well-typed value, or None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rule is Check.POSITIVE:
            return "must be > 0" if value <= 0 else None
        if rule is Check.AT_LEAST_ONE:
            return "must be >= 1" if value < 1 else None
        return "must be >= 0" if value < 0 else None
    if isinstance(value, tuple):
        problems = [check(item, rule) for item in value]
        return next((f"{problem} (each)" for problem in problems if problem), None)
    if rule in SPECIAL:
        problem: str | None = SPECIAL[rule](value)
        return problem
    if rule is Check.LISTEN:
        _host, sep, port = value.rpartition(":")
        return None if sep and port.isdigit() and 0 < int(port) < 65536 else f"must be {rule.value}"
    return None
