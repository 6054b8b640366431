"""docs/ keeps up with the code: every key of corral.toml and every exit code is documented.

The keys are walked from the same dataclasses the config reader uses (``SECTIONS`` and
``schema.keys_of``, and the contract's specs for the work tables), so a key added to the code
fails here until docs/configuration.md has a row for it under its table's heading.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from corral.contract import Check, ExitCode, QueueSpec, RedisSpec, ScheduleSpec, StreamSpec
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import FREE_FORM, SECTIONS
from corral.supervisor.schema import keys_of

DOCS = Path(__file__).resolve().parents[3] / "docs"
CONFIGURATION = DOCS / "configuration.md"
API = DOCS / "api.md"

WORK_TABLES: dict[str, type[Any]] = {
    "[redis]": RedisSpec,
    "[[streams]]": StreamSpec,
    "[[queues]]": QueueSpec,
    "[[schedules]]": ScheduleSpec,
}


def config_keys() -> dict[str, dict[str, dataclasses.Field[Any]]]:
    """Heading (``[pool]``, ``[[queues]]``) -> the keys of that table, as the config reader sees them."""
    tables: dict[str, dict[str, dataclasses.Field[Any]]] = {}
    for name, parts in SECTIONS.items():
        tables[f"[{name}]"] = {key: f for cls, tag in parts for key, f in keys_of(cls, tag).items()}
    for heading, cls in WORK_TABLES.items():
        tables[heading] = dict(keys_of(cls))
    return tables


def table_rows(path: Path, level: str = "#") -> dict[str, list[list[str]]]:
    """Heading text -> the body rows (cells stripped) of the markdown tables under it; a heading
    counts when it starts with ``level`` (``"## "``: only level-2 headings open a section)."""
    rows: dict[str, list[list[str]]] = {}
    heading = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(level):
            heading = line.lstrip("#").strip()
            rows.setdefault(heading, [])
        elif line.startswith("|") and heading:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if set(cells[0]) <= set("-: "):
                continue  # the separator row
            rows[heading].append(cells)
    return rows


def first_code(cell: str) -> str | None:
    """The text of the first ``code span`` in a cell."""
    parts = cell.split("`")
    return parts[1] if len(parts) >= 3 else None


def config_rows(heading: str) -> dict[str, list[str]]:
    """Key -> its row, for the table rows under ``## <heading>`` in docs/configuration.md."""
    sections = table_rows(CONFIGURATION, "## ")
    assert heading in sections, f"docs/configuration.md has no '## {heading}' heading"
    return {key: row for row in sections[heading] if (key := first_code(row[0])) is not None}


TABLES = config_keys()


@pytest.mark.parametrize("heading", sorted(TABLES))
def test_every_key_of_the_code_has_a_row_under_its_table(heading: str) -> None:
    documented = config_rows(heading)
    missing = sorted(set(TABLES[heading]) - set(documented))
    assert not missing, f"docs/configuration.md, '## {heading}': no table row for {missing}"


@pytest.mark.parametrize("heading", sorted(TABLES))
def test_no_row_documents_a_key_the_code_does_not_have(heading: str) -> None:
    stale = sorted(set(config_rows(heading)) - set(TABLES[heading]))
    assert not stale, f"docs/configuration.md, '## {heading}': rows for keys the code lacks: {stale}"


def test_every_table_heading_is_a_table_of_the_config() -> None:
    known = {*TABLES, *(f"[{name}]" for name in FREE_FORM)}
    headings = {h for h in table_rows(CONFIGURATION, "## ") if h.startswith("[")}
    assert headings == known, (
        f"headings {sorted(headings - known)} unknown, {sorted(known - headings)} missing"
    )


def documented_default(cell: str) -> Any:
    """The default column: ``required``, ``unset`` (None), or a TOML value (in backticks or not)."""
    text = cell.strip().strip("`")
    if text.startswith("required"):
        return dataclasses.MISSING
    if text.startswith("unset"):
        return None
    return tomllib.loads(f"value = {text}")["value"]


def code_default(spec_field: dataclasses.Field[Any]) -> Any:
    if spec_field.default is not dataclasses.MISSING:
        value = spec_field.default
    elif spec_field.default_factory is not dataclasses.MISSING:
        value = spec_field.default_factory()
    else:
        return dataclasses.MISSING
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("heading", sorted(TABLES))
def test_documented_defaults_and_constraints_match_the_code(heading: str) -> None:
    rows = config_rows(heading)
    for key, spec_field in TABLES[heading].items():
        if key not in rows:
            continue  # reported by the test above
        _key, _type, default, constraint, *_ = rows[key]
        expected = code_default(spec_field)
        got = documented_default(default)
        assert (got == expected and type(got) is type(expected)) or (
            isinstance(expected, float) and type(got) is int and got == expected
        ), f"{heading} {key}: documented default {default!r}, the code says {expected!r}"
        hint = typing.get_type_hints(spec_field_owner(heading, key))[key]
        numeric = any(t in (int, float) for t in (typing.get_args(hint) or (hint,)))
        if spec_field.metadata.get("check") is Check.POSITIVE:
            assert "> 0" in constraint and ">= 0" not in constraint, f"{heading} {key}: must say '> 0'"
        elif spec_field.metadata.get("check") is Check.AT_LEAST_ONE:
            assert ">= 1" in constraint, f"{heading} {key}: must say '>= 1'"
        elif numeric:
            assert ">= 0" in constraint, f"{heading} {key}: must say '>= 0'"


def spec_field_owner(heading: str, key: str) -> type[Any]:
    if heading in WORK_TABLES:
        return WORK_TABLES[heading]
    for cls, tag in SECTIONS[heading.strip("[]")]:
        if key in keys_of(cls, tag):
            return cls
    raise AssertionError(f"{heading} {key}: no dataclass")


@pytest.mark.parametrize("codes", [ExitCode, SupervisorExit], ids=lambda c: c.__name__)
def test_every_exit_code_has_a_row_under_its_enum(codes: type[IntEnum]) -> None:
    sections = table_rows(API)
    headings = [h for h in sections if f"`{codes.__name__}`" in h]
    assert headings, f"docs/api.md has no heading naming `{codes.__name__}`"
    rows = [row for h in headings for row in sections[h]]
    for code in codes:
        found = [row for row in rows if row[0] == str(int(code)) and f"`{code.name}`" in " ".join(row)]
        assert found, f"docs/api.md: no row '| {int(code)} | `{code.name}` |' under `{codes.__name__}`"
