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
    seconds: float = 0.0  # the measured span (see `clock`)
    clock: str = ""  # "push": from the first push; "first job": from the first completed job
    startup_s: float | None = None  # peers: workers started -> first job done
    enqueue_s: float | None = None  # peers: enqueueing N jobs with their own client
    error: str | None = None
    worker_cpu_us: float | None = None  # CPU of all worker processes per job (user+system)
    server_cpu_us: float | None = None  # CPU of valkey-server per job

    @property
    def finished(self) -> bool:
        return self.error is None

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


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


HEADER = ("system", "queue jobs/s", "stream entries/s", "vs best peer", "vs raw")


def rows_of(
    medians: dict[str, Result], peer_runs: list[Result], best_rate: float, concurrency: int
) -> list[tuple[str, ...]]:
    cq, cs, rq, rs, ras = (medians[k] for k in ("cq", "cs", "rq", "rs", "ras"))
    rows = [
        (
            f"corral (queue / stream), concurrency {concurrency}",
            rate_text(cq),
            rate_text(cs),
            ratio(cq.rate, best_rate),
            f"{ratio(cq.rate, rq.rate)} / {ratio(cs.rate, rs.rate)}",
        ),
        ("raw redis-py (per-job BLMOVE / batched XREADGROUP)", rate_text(rq), rate_text(rs),
         ratio(rq.rate, best_rate), "1.00x / 1.00x"),
        ("raw redis.asyncio (batched XREADGROUP)", "-", rate_text(ras), "-",
         f"- / {ratio(ras.rate, rs.rate)}"),
    ]  # fmt: skip
    if "cqb" in medians and "csb" in medians:
        cqb, csb = medians["cqb"], medians["csb"]
        rows.insert(1, (
            "corral batch handler (queue / stream), INCRs pipelined", rate_text(cqb), rate_text(csb),
            ratio(cqb.rate, best_rate), f"{ratio(cqb.rate, rq.rate)} / {ratio(csb.rate, rs.rate)}",
        ))  # fmt: skip
    rows += [
        (p.system, rate_text(p), "-", ratio(p.rate, best_rate) if p.finished else "-", ratio(p.rate, rq.rate))
        for p in peer_runs
    ]
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
        f"corral and raw: median of {args.reps}, timed from the first push; peers: one run each{repeated}, "
        "timed from their first completed job (their enqueueing and start-up are not counted)"
    )
    print(line(HEADER))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    return widths[0]


def check_targets(medians: dict[str, Result], best: Result | None, targets: Targets) -> list[dict[str, Any]]:
    cq, cs, rq, rs = (medians[k] for k in ("cq", "cs", "rq", "rs"))
    best_rate = best.rate if best else 0.0
    checks = [
        (f"corral queue >= {targets.vs_peer:g}x best peer" + (f" ({best.system})" if best else ""),
         cq.rate / best_rate if best_rate else None, targets.vs_peer),
        (f"corral queue >= {targets.vs_raw_queue:g}x raw per-job BLMOVE loop", cq.rate / rq.rate,
         targets.vs_raw_queue),
        (f"corral stream >= {targets.vs_raw_stream:.0%} of raw batched XREADGROUP loop", cs.rate / rs.rate,
         targets.vs_raw_stream),
    ]  # fmt: skip
    if "csb" in medians:
        text = f"corral stream batch handler >= {targets.vs_raw_batch:g}x raw batched XREADGROUP loop"
        checks.append((text, medians["csb"].rate / rs.rate, targets.vs_raw_batch))
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
    for key, system in (("cqb", "corral queue batch handler"), ("csb", "corral stream batch handler")):
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
        f"{result['reps']}."
    )
    lines = [head, "", "| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(str(row[name]) for name in HEADER) + " |" for row in result["table"]]
    lines += ["", "| target | measured | result |", "|---|---:|---|"]
    for target in result["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:.2f}x"
        lines.append(f"| {target['target']} | {value} | {target['result']} |")
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
