"""The README's blargbot port, run as written: its Python and TOML blocks are written to a folder,
``corral run`` starts them from another working directory, and the child->parent request, the
parent->child request (``corral request``) and ``corral send`` all work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.conftest import REPO_ROOT, Corral, wait_until

pytestmark = pytest.mark.e2e
SECTION = "## Both sides of the IPC"


def readme_blocks() -> dict[str, str]:
    """The section's fenced blocks by language: ``python`` and ``toml``."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    return {lang: body for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S)}


def test_the_readme_blargbot_port_runs_as_written(corral: Callable[..., Corral]) -> None:
    blocks = readme_blocks()
    sup = corral(worker="unused:Unused", workers=2)  # the handle: its process, logs and cleanup
    (sup.root / "pingpong.py").write_text(blocks["python"])
    toml = blocks["toml"] + '\n[paths]\nstate_dir = "run"\nlog_dir = "logs"\n'
    sup.config.write_text(toml)
    sup.start()  # from the repository's root: pingpong.py is found beside the config, not in the cwd
    sup.wait_all_ready(2, timeout_s=20)
    for slot in (0, 1):
        wait_until(lambda s=slot: "the parent answered: back at you, worker" in sup.log(str(s)), 10)
        assert f"back at you, worker {slot} (pid " in sup.log(str(slot))
    done = sup.cli("request", "1", "stats")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["slot"] == 1 and reply["pongs"][0].startswith("back at you, worker 1")
    sent = sup.cli("send", "0", "stats")
    assert sent.returncode == 0 and "sent stats to slot 0" in sent.stdout
    missing = sup.cli("request", "0", "no-such-event")
    assert missing.returncode == 1 and "no-such-event" in missing.stderr and "Traceback" not in missing.stderr
    assert sup.cli("request", "7", "stats").returncode == 1  # no slot 7: one line, exit 1
    stop = subprocess.run(
        [sys.executable, "-m", "corral.entrypoints.cli", "stop", "-c", str(sup.config)],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert sup.wait_exit(30) == 0
