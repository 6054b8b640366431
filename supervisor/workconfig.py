"""``[redis]``, ``[[streams]]`` and ``[[queues]]``: checked against the fields and types of the
specs in ``workers.specs`` (the contract with the children), so the schema lives in one place."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

from workers.specs import QueueSpec, RedisSpec, StreamSpec, WorkSpec

REDIS_URL_ENV = "CORRAL_REDIS_URL"
POSITIVE = {
    "concurrency",
    "batch_size",
    "max_attempts",
    "max_deliveries",
    "block_s",
    "refresh_s",
    "member_ttl_s",
    "claim_interval_s",
    "trim_interval_s",
    "trim_maxlen",
    "socket_timeout_s",
    "connect_timeout_s",
}
URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value) for a TOML value against a field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        return _coerce(value, next(a for a in args if a is not type(None)))
    if origin is tuple:
        ok = isinstance(value, list) and all(type(v) is str for v in value)
        return ok, tuple(value) if ok else value
    if hint is float and type(value) in (int, float):
        return True, float(value)
    return type(value) is hint, value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    name = (args[0] if args else hint).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def from_table(cls: type[Any], table: Any, where: str, errors: list[str]) -> Any:
    """Build ``cls`` from a TOML table, appending one error per bad key to ``errors``."""
    if not isinstance(table, dict):
        errors.append(f"{where}: must be a table")
        return None
    hints = typing.get_type_hints(cls)
    before = len(errors)
    errors.extend(f"{where}.{key}: unknown key" for key in table if key not in hints)
    kwargs: dict[str, Any] = {}
    for spec_field in dataclasses.fields(cls):
        name = spec_field.name
        if name not in table:
            if (
                spec_field.default is dataclasses.MISSING
                and spec_field.default_factory is dataclasses.MISSING
            ):
                errors.append(f"{where}.{name}: required")
            continue
        ok, value = _coerce(table[name], hints[name])
        if not ok:
            errors.append(f"{where}.{name}: must be {_describe(hints[name])}, got {table[name]!r}")
        elif _is_number(value) and (value <= 0 if name in POSITIVE else value < 0):
            errors.append(f"{where}.{name}: must be {'> 0' if name in POSITIVE else '>= 0'}, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs) if len(errors) == before else None


def _check_handler(path: str, where: str, errors: list[str]) -> None:
    module, _, attr = path.partition(":")
    if not module or not attr:
        errors.append(f"{where}.handler: must be an import path 'package.module:function', got {path!r}")


def parse_work(data: dict[str, Any], pool_name: str, errors: list[str]) -> WorkSpec:
    redis_table = dict(data.get("redis", {})) if isinstance(data.get("redis", {}), dict) else data["redis"]
    if isinstance(redis_table, dict) and os.environ.get(REDIS_URL_ENV):
        redis_table["url"] = os.environ[REDIS_URL_ENV]  # secrets stay out of the file
    redis = from_table(RedisSpec, redis_table, "redis", errors) or RedisSpec()
    if redis.url is not None and not redis.url.startswith(URL_SCHEMES):
        errors.append(f"redis.url: must start with one of {', '.join(URL_SCHEMES)}, got {redis.url!r}")
    streams, queues = [], []
    for index, table in enumerate(_array(data, "streams", errors)):
        where = f"streams[{index}]"
        spec = from_table(StreamSpec, table, where, errors)
        if spec is not None:
            _check_handler(spec.handler, where, errors)
            streams.append(dataclasses.replace(spec, group=spec.group or pool_name))
    for index, table in enumerate(_array(data, "queues", errors)):
        where = f"queues[{index}]"
        spec = from_table(QueueSpec, table, where, errors)
        if spec is not None:
            _check_handler(spec.handler, where, errors)
            if not (spec.names or spec.pattern or spec.registry):
                errors.append(f"{where}: needs names, pattern or registry")
            queues.append(spec)
    return WorkSpec(redis=redis, streams=tuple(streams), queues=tuple(queues))


def _array(data: dict[str, Any], name: str, errors: list[str]) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        errors.append(f"{name}: must be an array of tables ([[{name}]])")
        return []
    return value
