"""What ``bench/throughput.py`` measures (``Result``) and how it reports it: the table, the targets
with their verdicts, CPU per job, and the JSON summary."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import peers


@dataclass
class Result:
    system: str
    kind: str  # "queue" | "stream"
    n: int
    done: int = 0
    seconds: float = 0.0  # the whole run: workers started (every job enqueued before) -> last job done
    startup_s: float | None = None  # workers started -> first job done
    steady_done: int = 0  # jobs done from the first reading of a non-zero count on
    steady_s: float = 0.0  # first job done -> last job done
    enqueue_s: float | None = None  # peers: enqueueing N jobs with their own client
    error: str | None = None
    worker_cpu_us: float | None = None  # CPU of all worker processes per job (user+system)
    server_cpu_us: float | None = None  # CPU of valkey-server per job

    @property
    def finished(self) -> bool:
        return self.error is None

    @property
    def rate(self) -> float:
        """Over the whole run, start-up included."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        return self.steady_done / self.steady_s if self.steady_s > 0 else 0.0


@dataclass(frozen=True)
class Targets:
    vs_peer: float  # corral queue >= this x the best peer
    vs_raw_queue: float  # corral queue >= this x the raw per-job BLMOVE loop
    vs_raw_stream: float  # corral stream >= this x the raw batched XREADGROUP loop
    vs_raw_batch: float = 2.0  # corral stream with a batch handler >= this x the raw batched loop


def rate_text(result: Result | None) -> str:
    if result is None:
        return "-"
    if not result.done:
        return "error"
    text = f"{result.rate:,.0f}"
    return text if result.finished else f"DNF {text}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


HEADER = (
    "system",
    "queue jobs/s",
    "stream entries/s",
    "steady /s (queue / stream)",
    "start-up s (queue / stream)",
    "vs best peer",
    "vs raw",
)


def both(a: Result | None, b: Result | None, text: Any) -> str:
    return f"{text(a) if a else '-'} / {text(b) if b else '-'}"


def steady(r: Result) -> str:
    return f"{r.steady_rate:,.0f}" if r.done else "-"


def startup(r: Result) -> str:
    return "-" if r.startup_s is None else f"{r.startup_s:.2f}"


def rows_of(
    medians: dict[str, Result], peer_runs: list[Result], best_rate: float, concurrency: int
) -> list[tuple[str, ...]]:
    """One row a system: whole-run rates, steady rates, start-ups, ratios of the whole-run rates."""
    rq, rs, ras = (medians[k] for k in ("rq", "rs", "ras"))

    def row(label: str, q: Result | None, s: Result | None) -> tuple[str, ...]:
        vs_peer = both(q, s, lambda r: ratio(r.rate, best_rate) if r.finished else "-")
        vs_raw = f"{ratio(q.rate, rq.rate) if q else '-'} / {ratio(s.rate, rs.rate) if s else '-'}"
        return (label, rate_text(q), rate_text(s), both(q, s, steady), both(q, s, startup), vs_peer, vs_raw)

    rows = [row(f"corral, concurrency {concurrency}", medians["cq"], medians["cs"])]
    if "cq1" in medians and "cs1" in medians:
        rows.append(row("corral, concurrency 1", medians["cq1"], medians["cs1"]))
    if "cqb" in medians and "csb" in medians:
        rows.append(row("corral batch handler, INCRs pipelined", medians["cqb"], medians["csb"]))
    rows += [
        row("raw redis-py (per-job BLMOVE / batched XREADGROUP)", rq, rs),
        row("raw redis.asyncio (batched XREADGROUP)", None, ras),
    ]
    rows += [row(p.system, p, None) for p in peer_runs]
    return rows


def print_table(rows: list[tuple[str, ...]], args: Any, workers: int) -> int:
    """The table, under a header line saying how it was measured; returns the first column's width."""
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        rest = [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return " | ".join([f"{cells[0]:<{widths[0]}}", *rest])

    repeated = "".join(
        f" ({p.label.split()[0]}: median of {p.reps})" for p in peers.PEERS if p.reps > 1 and not args.quick
    )
    print()
    print(
        f"corral throughput bench ({args.mode}: {args.n:,} jobs, {workers} worker processes each, python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load avg {args.load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end, {args.transport})"
    )
    print(
        f"corral and raw: median of {args.reps}; peers: one run each{repeated}; every job enqueued first, "
        "then the workers spawned: rates over the whole run (spawn -> last job), the steady rate from the "
        "first job done, start-up = spawn -> first job done"
    )
    print(line(HEADER))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    return widths[0]


def check_targets(medians: dict[str, Result], best: Result | None, targets: Targets) -> list[dict[str, Any]]:
    cq, cs, rq, rs = (medians[k] for k in ("cq", "cs", "rq", "rs"))
    best_rate = best.rate if best else 0.0
    peer = f" ({best.system})" if best else ""
    checks = [
        (f"corral queue >= {targets.vs_peer:g}x best peer{peer}",
         cq.rate / best_rate if best_rate else None, targets.vs_peer),
        (f"corral stream >= {targets.vs_peer:g}x best peer{peer}",
         cs.rate / best_rate if best_rate else None, targets.vs_peer),
        (f"corral queue >= {targets.vs_raw_queue:g}x raw per-job BLMOVE loop", cq.rate / rq.rate,
         targets.vs_raw_queue),
        (f"corral stream >= {targets.vs_raw_stream:.0%} of raw batched XREADGROUP loop", cs.rate / rs.rate,
         targets.vs_raw_stream),
    ]  # fmt: skip
    if "csb" in medians:
        text = f"corral stream batch handler >= {targets.vs_raw_batch:g}x raw batched XREADGROUP loop"
        checks.append((text, medians["csb"].rate / rs.rate, targets.vs_raw_batch))
        steady_ratio = medians["csb"].steady_rate / rs.steady_rate if rs.steady_rate else None
        checks.append((f"{text}, steady", steady_ratio, targets.vs_raw_batch))
    for kind, one in (("queue", "cq1"), ("stream", "cs1")):
        if one in medians and medians[one].steady_rate:
            lanes = medians["cq" if kind == "queue" else "cs"].steady_rate / medians[one].steady_rate
            checks.append((f"corral {kind}: 8 lanes >= 1 lane, steady", lanes, 1.0))
    print()
    verdicts = []
    width = max(len(text) for text, _, _ in checks)
    for text, value, target in checks:
        ok = value is not None and value >= target and cq.finished and cs.finished
        verdict = "SKIP" if value is None else ("PASS" if ok else "FAIL")
        verdicts.append({"target": text, "value": value, "result": verdict})
        print(f"{text:<{width}}  {'-' if value is None else f'{value:.2f}x':>6}  {verdict}")
    return verdicts


def print_cpu(results: list[Result], width: int) -> None:
    print()
    print(
        "CPU per job (user+system, from the first job on), in microseconds: worker processes | valkey-server"
    )
    for r in results:
        if r.worker_cpu_us is not None and r.server_cpu_us is not None:
            print(f"  {r.system:<{width}} {r.worker_cpu_us:7.0f} | {r.server_cpu_us:5.0f}")
    for r in results:
        if r.error:
            print(f"note: {r.system}: {r.error}")


def report(
    runs: dict[str, list[Result]],
    peer_runs: list[Result],
    args: Any,
    targets: Targets,
    *,
    concurrency: int,
    raw_modes: list[str],
    workers: int,
) -> dict[str, Any]:
    """Print the whole report; returns it as JSON-ready data."""
    medians = {"cq": median_run(runs["corral queue"]), "cs": median_run(runs["corral stream"])}
    optional = (
        ("cqb", "corral queue batch handler"),
        ("csb", "corral stream batch handler"),
        ("cq1", "corral queue concurrency 1"),
        ("cs1", "corral stream concurrency 1"),
    )
    for key, system in optional:
        if system in runs:
            medians[key] = median_run(runs[system])
    medians.update(
        zip(("rq", "rs", "ras"), (median_run(runs[f"raw {mode}"]) for mode in raw_modes), strict=True)
    )
    best = max((p for p in peer_runs if p.finished), key=lambda p: p.rate, default=None)
    rows = rows_of(medians, peer_runs, best.rate if best else 0.0, concurrency)
    width = print_table(rows, args, workers)
    verdicts = check_targets(medians, best, targets)
    print_cpu([*medians.values(), *peer_runs], width)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": args.mode,
        "n": args.n,
        "workers": workers,
        "reps": args.reps,
        "transport": args.transport,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": args.load,
        "load_avg_1m_end": os.getloadavg()[0],
        "table": [dict(zip(HEADER, row, strict=True)) for row in rows],
        "cpu": [
            {"system": r.system, "worker_us": r.worker_cpu_us, "server_us": r.server_cpu_us}
            for r in [*medians.values(), *peer_runs]
            if r.worker_cpu_us is not None
        ],
        "targets": verdicts,
        "runs": [
            {**asdict(r), "rate": r.rate, "finished": r.finished}
            for r in [*(r for group in runs.values() for r in group), *peer_runs]
        ],
    }


def markdown(result: dict[str, Any], command: str) -> str:
    """The run as BENCHMARKS.md shows it: how it was run (machine, load, command), the table and the
    targets, all from the run itself."""
    head = (
        f"`{command}`, {result['when']}: {result['n']:,} jobs, {result['workers']} worker processes each, "
        f"python {result['python']}, {result['cpus']} CPUs, load average {result['load_avg_1m']:.2f} at the "
        f"start and {result['load_avg_1m_end']:.2f} at the end, {result['transport']}, medians of "
        f"{result['reps']} (peers: huey, dramatiq and taskiq medians of 3, the others one run). Every job "
        "enqueued first, then the "
        "workers spawned: rates over the whole run (spawn → last job), steady from the first job done, "
        "start-up = spawn → first job done."
    )
    lines = [head, "", "| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(str(row[name]) for name in HEADER) + " |" for row in result["table"]]
    lines += ["", "Targets, on the whole-run rates:", "", "| target | measured | result |", "|---|---:|---|"]
    for target in result["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:.2f}x"
        lines.append(f"| {target['target']} | {value} | {target['result']} |")
    lines += ["", "CPU per job, steady (user+system, µs):", "", "| system | workers | valkey-server |"]
    lines.append("|---|---:|---:|")
    lines += [f"| {c['system']} | {c['worker_us']:.0f} | {c['server_us']:.0f} |" for c in result["cpu"]]
    return "\n".join(lines) + "\n"


def update_doc(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- <name>:begin -->`` and ``<!-- <name>:end -->`` in ``path``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8")
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin} ... {end} block to update")
    before, rest = doc.split(begin, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{begin}\n{text}{end}{after}", encoding="utf-8")
