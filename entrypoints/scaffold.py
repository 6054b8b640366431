"""``corral init [DIR]``: scaffold a runnable project (a config, a worker module, a systemd unit, a README).

``scaffold()`` does the work and raises ``ScaffoldError`` for a user mistake; ``add_parser()`` and
``run()`` are the command-line side, wired into ``corral`` by ``entrypoints/cli/parser.py``. The
project runs with ``corral run -c DIR/corral.toml`` from anywhere: the children import the worker
module from the config's folder (``[paths] python_path``).
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import os
import pwd
import shlex
import shutil
import sys
from pathlib import Path
from string import Template

from corral.contract import Check
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.schema import check

CONFIG_FILE = "corral.toml"
UNIT_FILE = "corral.service"
README_FILE = "README.md"
FALLBACK_NAME = "app"  # when DIR's folder name has nothing usable in a pool name

CONFIG_TEMPLATE = Template("""\
# ${name}: a corral pool, made by `corral init`. Run it from this folder:
#   corral run                                           # Ctrl-C (or `corral stop`) stops it
#   corral enqueue ${name}:jobs '{"hello": 1}' -c corral.toml
#   corral status -c corral.toml                         # slots, queues, metrics (--json)
# Every key and its default: docs/configuration.md in corral's repository.

[pool]
name = "${name}"
workers = 2                         # number of slots (child processes)
# What every child runs: the Worker class of ${module}.py, beside this file.
worker = "${module}:Worker"

# No [redis] url: `corral run` starts a private Valkey server on a Unix socket in the state dir.
# To use your own server, uncomment these two lines (the CORRAL_REDIS_URL environment variable,
# e.g. CORRAL_REDIS_URL=redis://:secret@10.0.0.5:6379/0, overrides the url and keeps it out of here):
# [redis]
# url = "redis://127.0.0.1:6379/0"   # also rediss:// (TLS) and unix:///path/redis.sock

# Job queues on Redis lists: a job is any JSON value (a plain LPUSH works too), taken at least
# once and handed to handle_job(job, ctx) in ${module}.py.
[[queues]]
names = ["${name}:jobs"]
handler = "${module}:handle_job"
# batch_size = 10                   # jobs taken per round trip
# max_attempts = 5                  # then dead-lettered, with the last error

# A Redis stream read through a consumer group, at least once (write the handler first):
# [[streams]]
# stream = "${name}:events"
# handler = "${module}:handle_event"   # handle_event(message, ctx): message.fields is a dict
# group = "${name}"

[paths]                             # relative to this file
state_dir = "run"                   # control socket, pid file, the embedded server's socket
log_dir = "logs"                    # supervisor.log and worker-<slot>.log
""")

WORKER_TEMPLATE = Template('''\
"""${name}: the code of a corral pool (see corral.toml and README.md beside this file).

Every child runs a ``Worker``; ``handle_job`` is called for each job of the ${name}:jobs queue.
"""

from __future__ import annotations

from typing import Any

from corral.workers import BaseWorker, HandlerContext, Job

HANDLED = "${name}:handled"  # a Redis counter: jobs handled by the whole pool


class Worker(BaseWorker):
    async def start(self) -> None:
        self.on("ping", self.ping)  # a request handler for the supervisor (IPC)
        # self.manager.register_worker(unit)  # periodic work: see "Writing a worker" in corral's README
        await super().start()  # announces ready to the supervisor

    def ping(self, data: Any) -> str:
        return f"pong from slot {self.slot}"


async def handle_job(job: Job, ctx: HandlerContext) -> None:
    """One job; raising an exception retries it with backoff, then dead-letters it."""
    ctx.log.info("job {} (attempt {}): {!r}", job.id, job.attempt, job.data)
    await ctx.redis.incr(HANDLED)
''')

UNIT_TEMPLATE = Template("""\
# ${name}: the corral pool in ${dir} as a systemd service (made by `corral init`,
# after corral's systemd/corral.service, which explains every line).
#
# Install:  sudo cp ${unit_shell} /etc/systemd/system/corral-${name}.service
#           sudo systemctl daemon-reload && sudo systemctl enable --now corral-${name}
# Reload:   sudo systemctl reload corral-${name}   (rolling reload: new code, config re-read)

[Unit]
Description=corral worker pool ${name}
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
# The supervisor speaks sd_notify: READY=1 once every slot is ready, watchdog pings, STATUS= lines.
Type=notify
NotifyAccess=main
User=${user}
WorkingDirectory=${workdir}
ExecStart=${exec_start}
# `corral reload` waits for the outcome: a refused reload fails `systemctl reload` with the reason.
ExecReload=${exec_reload}
SyslogIdentifier=corral-${name}

# SIGTERM to the supervisor only; it stops its children within pool.graceful_timeout_s (30 s).
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=60
TimeoutStartSec=90
WatchdogSec=30
Restart=on-failure
RestartSec=5
OOMPolicy=continue
LimitNOFILE=65536
Environment=PYTHONUNBUFFERED=1

# Hardening: the file system is read-only but for this folder (state dir, logs, __pycache__).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=${rw_path}
${private_tmp}
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
""")

README_TEMPLATE = Template("""\
- Run: `corral run -c ${dir_shell}/corral.toml` (Ctrl-C or `corral stop -c ...` stops it)
- Enqueue: `corral enqueue ${name}:jobs '{"hello": 1}' -c corral.toml` (from this folder)
- Watch: `corral status -c corral.toml` (slots, queues; `corral logs 0 -f -c corral.toml` for a log)
""")


class ScaffoldError(Exception):
    """A user mistake: files in the way, or a bad pool name. The message is one line."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``init`` sub-command: ``corral init [DIR] [--name NAME] [--force]``."""
    parser = sub.add_parser(
        "init",
        help="create a runnable project: corral.toml, a worker module, a systemd unit, a README",
        description="Write a runnable corral project into DIR (created if missing).",
    )
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the project folder (default: .)")
    parser.add_argument("--name", help="the pool name (default: DIR's folder name)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist already")


def run(args: argparse.Namespace) -> int:
    """``corral init``: write the project, then print what was written and what to run next."""
    target = Path(args.dir)
    name = args.name if args.name is not None else default_name(target)
    try:
        written = scaffold(target, name, force=args.force)
    except ScaffoldError as exc:
        print(f"corral: init: {exc}", file=sys.stderr)
        return int(SupervisorExit.CONFIG)
    except OSError as exc:
        print(f"corral: init: cannot write the project in {target}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    folder, corral = target.absolute(), _corral_command()
    print("next, run the pool, then (from another terminal) give it a job:")
    print(f"  {corral} run -c {shlex.quote(str(folder / 'corral.toml'))}")
    print(f"  {corral} enqueue {name}:jobs '{{\"hello\": 1}}' -c {shlex.quote(str(folder / CONFIG_FILE))}")
    return 0


def scaffold(target: Path, name: str, force: bool = False) -> list[Path]:
    """Write the project into ``target`` (created if missing); returns the files written.

    Raises ``ScaffoldError`` when ``name`` is not a valid pool name, or when ``target`` holds any of
    the files already and ``force`` is false (then nothing is written)."""
    problem = check(name, Check.NAME)
    if problem is not None:
        raise ScaffoldError(f"{name!r} is not a valid pool name: it {problem}")
    target = target.absolute()
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} exists and is not a folder")
    module = module_name(name, target)
    files = render(target, name, module)
    present = [path.name for path in files if path.exists() or path.is_symlink()]
    if present and not force:
        raise ScaffoldError(f"{target} has {', '.join(present)} already (--force overwrites)")
    target.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        try:
            with path.open("w" if force else "x", encoding="utf-8") as handle:
                handle.write(text)
        except FileExistsError:  # appeared since the check above
            raise ScaffoldError(f"{path} appeared while writing (--force overwrites)") from None
    return list(files)


def render(target: Path, name: str, module: str) -> dict[Path, str]:
    """Each file of the project in ``target`` (an absolute path), with its text."""
    values = {"name": name, "module": module, "dir": str(target), "dir_shell": shlex.quote(str(target))}
    return {
        target / CONFIG_FILE: CONFIG_TEMPLATE.substitute(values),
        target / f"{module}.py": WORKER_TEMPLATE.substitute(values),
        target / UNIT_FILE: render_unit(target, name),
        target / README_FILE: README_TEMPLATE.substitute(values),
    }


def render_unit(target: Path, name: str) -> str:
    """The systemd unit: this environment's ``corral`` on this project's config, run from its folder."""
    corral = corral_executable()
    in_tmp = any(_is_under(path, Path("/tmp")) for path in (target, corral))
    values = {
        "name": name,
        "dir": str(target),
        "unit_shell": shlex.quote(str(target / UNIT_FILE)),
        "user": _user_name(),
        "workdir": _unit_escape(str(target)),
        "exec_start": exec_line(corral, "run", target / CONFIG_FILE),
        "exec_reload": exec_line(corral, "reload", target / CONFIG_FILE),
        "rw_path": _unit_word(str(target)),
        "private_tmp": "# PrivateTmp=yes is off: this folder or corral is under /tmp"
        if in_tmp
        else "PrivateTmp=yes",
    }
    return UNIT_TEMPLATE.substitute(values)


def exec_line(corral: Path, command: str, config: Path) -> str:
    """``corral COMMAND -c CONFIG`` as a unit's Exec line."""
    return " ".join(_unit_word(word, exec_line=True) for word in (str(corral), command, "-c", str(config)))


def corral_executable() -> Path:
    """The ``corral`` script of the running environment (the virtualenv's, not the system's)."""
    return Path(sys.executable).absolute().with_name("corral")


def default_name(target: Path) -> str:
    """DIR's folder name turned into a pool name: other characters become '-'."""
    folder = target.absolute().resolve().name
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder)
    while "--" in name:
        name = name.replace("--", "-")
    return name.strip("-.") or FALLBACK_NAME


def module_name(name: str, target: Path) -> str:
    """The worker module's name: the pool name with '-' and '.' as '_' (``my-app`` -> ``my_app``).
    A name that is not an identifier gets an ``app_`` prefix; one that would hide an importable
    module (``redis``, ``json``, ``corral``) gets an ``_app`` suffix."""
    module = "".join(c if f"_{c}".isidentifier() else "_" for c in name)
    if not module.isidentifier():
        module = f"app_{module}"
    if keyword.iskeyword(module) or _shadows(module, target):
        module = f"{module}_app"
    return module


def _shadows(module: str, target: Path) -> bool:
    """Whether a file ``<module>.py`` in ``target`` would hide a module of the standard library or
    of this environment from the children (the config's folder comes first on their path)."""
    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return True
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    return spec.origin is None or not _is_under(Path(spec.origin), target)


def _is_under(path: Path, folder: Path) -> bool:
    return path.absolute().is_relative_to(folder.absolute())


def _unit_escape(value: str) -> str:
    """A value with systemd's specifiers (``%``) kept literal."""
    return value.replace("%", "%%")


def _unit_word(value: str, exec_line: bool = False) -> str:
    """One word of a unit's list (``ExecStart=``, ``ReadWritePaths=``), quoted when it needs to be;
    on an ``Exec*`` line ``$`` is kept literal too."""
    value = _unit_escape(value)
    if exec_line:
        value = value.replace("$", "$$")
    if any(c.isspace() or c in "\"'\\" for c in value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _corral_command() -> str:
    """How to type ``corral`` in a shell: its name when PATH finds this environment's, else its path."""
    executable = corral_executable()
    found = shutil.which("corral")
    if found is not None and Path(found).absolute() == executable:
        return "corral"
    return shlex.quote(str(executable))


def _user_name() -> str:
    """Who runs ``corral init`` (the unit's User=): their name, or their uid without a passwd entry."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
