"""A real ``corral run`` under setsid for the chaos tier, killed and reaped whatever happens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Corral, set_child_subreaper


@pytest.fixture
def launch_corral(tmp_path: Path) -> Iterator[Callable[[str], Corral]]:
    """``launch_corral(toml_text)``: write ``corral.toml`` and start ``corral run`` on it in a new
    session. At teardown, pass or fail, the whole session is SIGKILLed (``os.killpg`` on the
    supervisor's pid, which is its process group id), every child pid seen is killed, all reaped."""
    made: list[Corral] = []
    set_child_subreaper(True)  # orphans come to us, so we can reap them

    def launch(text: str) -> Corral:
        root = tmp_path / f"corral-{len(made)}"
        root.mkdir()
        config = root / "corral.toml"
        config.write_text(text, encoding="utf-8")
        handle = Corral(root, config)
        made.append(handle)
        return handle.start()

    try:
        yield launch
    finally:
        try:
            errors = []
            for handle in made:
                try:
                    handle.kill_everything()
                except Exception as exc:  # keep cleaning the others
                    errors.append(exc)
            if errors:
                raise errors[0]
        finally:
            set_child_subreaper(False)
