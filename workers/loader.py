"""Resolve ``package.module:attr`` import paths (worker targets, handlers) with clear errors."""

from __future__ import annotations

import importlib
from typing import Any


class LoadError(Exception):
    """An import path that does not resolve to what it should."""


def load_object(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"{path!r} is not of the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise LoadError(f"cannot import {path!r}: {exc!r}") from exc
    return obj
