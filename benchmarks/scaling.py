"""Worker scaling: the calls 1 and 2 bridge workers carry when each has the same CPU budget.

    .venv/bin/python benchmarks/scaling.py [--worker-cpu 0.35 --workers 1,2 \\
        --per-worker 70,85,100,115,130 --duration 15 --json out.json]

A machine of two cores cannot give two workers a core each and still run the load generator
and the fixtures, so each worker is capped at the same fraction of a core instead
(``--worker-cpu``, a cgroup CPU quota with a 10 ms period: see ``cpu_cap.py``). For every
worker count W and every per-worker load C, the load benchmark (``load.py``, bridge only,
same calls, same method) runs N = W × C calls against ``callbridge serve --workers W``.

A run *keeps up* when no speech frame was lost, no call failed, and the median chunk lag
(sending the newest frame of a Scribe chunk → the emulator receiving it, see ``load.py``) is
at most ``--lag-ms`` (10 ms): a worker short of CPU falls behind and its lag grows by tens of
milliseconds at once. The *capacity* of W workers is the largest N of its ramp that kept up,
with every smaller step keeping up too; a ramp stops at its first step that does not. Linear
scaling means capacity(2) = 2 × capacity(1), and the CPU per call-second of 2 workers at
2C calls equal to that of 1 worker at C.

The kernel spreads connections over the workers by hash (``SO_REUSEPORT``), not evenly; the
per-worker CPU column shows the split, and the busier worker is the one that falls behind.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import load

from callbridge import event_loop


def keeps_up(result: dict[str, Any], lag_ms: float) -> tuple[bool, str]:
    """Whether one run kept up, and if not the first reason why."""
    lost = result["frames"]["speech_lost"]
    lag = result["chunk_lag_live_ms"]["p50"]
    if result["failed_calls"]:
        return False, f"{result['failed_calls']} calls failed"
    if lost:
        return False, f"{lost} speech frames lost"
    if lag is None or lag > lag_ms:
        return False, f"lag p50 {load._ms(lag)} ms > {lag_ms:g}"
    return True, "yes"


def capacity(steps: Sequence[dict[str, Any]]) -> tuple[int | None, bool]:
    """The largest N of a ramp that kept up with every smaller step keeping up too, and
    whether a larger step did not (else the capacity is only a lower bound)."""
    best = None
    for step in sorted(steps, key=lambda s: s["calls"]):
        if not step["keeps_up"]:
            return best, True
        best = step["calls"]
    return best, False


COLUMNS = (
    ("workers", 7), ("calls", 5), ("CPU ms/call-s", 13), ("worker CPU %", 13),
    ("throttled %", 11), ("lag p50", 7), ("lag p99", 7), ("lost", 4), ("hook p50", 8),
    ("hook p99", 8), ("busy%", 5), ("keeps up", 8),
)  # fmt: skip


def row(step: dict[str, Any]) -> str:
    result = step["result"]
    cap = result.get("cpu_cap") or {}
    hook = result.get("commit_to_webhook_ms") or {}
    lag = result["chunk_lag_live_ms"]
    cells = [
        str(step["workers"]), str(step["calls"]),
        f"{result['cpu_s_per_call_s'] * 1000:.2f}",
        "/".join(f"{v:.0f}" for v in result["worker_cpu_percent"]),
        "/".join(f"{v:.0f}" for v in cap.get("throttled_periods_percent", [])) or "-",
        load._ms(lag["p50"]), load._ms(lag["p99"]), str(result["frames"]["speech_lost"]),
        load._ms(hook.get("p50")), load._ms(hook.get("p99")),
        f"{result['cpu_percent']['machine']:.0f}", step["verdict"],
    ]  # fmt: skip
    return "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))


def summary(steps: Sequence[dict[str, Any]], workers: Sequence[int], cap: float) -> list[str]:
    found = {w: capacity([s for s in steps if s["workers"] == w]) for w in workers}

    def shown(w: int) -> str:
        calls, bounded = found[w]
        return f"{w} worker{'s' if w > 1 else ''} {'' if bounded else '≥ '}{calls or 0} calls"

    lines = [f"capacity at {cap:g} of a core per worker: " + ", ".join(map(shown, workers))]
    base, base_bounded = found[workers[0]]
    # per-call CPU by (workers, calls per worker), where the step kept up
    by_load = {
        (s["workers"], s["calls"] // s["workers"]): s["result"]["cpu_s_per_call_s"]
        for s in steps
        if s["keeps_up"]
    }
    for w in workers[1:]:
        calls, bounded = found[w]
        if base and calls and base_bounded and bounded:
            lines.append(
                f"scaling {workers[0]} → {w} workers: {calls / base:.2f}× the calls "
                f"(linear: {w / workers[0]:.2f}×)"
            )
        else:
            lines.append(
                f"scaling {workers[0]} → {w} workers: not measured (a ramp found no limit or "
                "no step kept up: move --per-worker or --worker-cpu)"
            )
        pairs = [
            (c, by_load[(w, c)] / by_load[(workers[0], c)])
            for (ww, c) in sorted(by_load)
            if ww == w and (workers[0], c) in by_load
        ]
        if pairs:
            ratios = ", ".join(f"{r:.2f} at {c}/worker" for c, r in pairs)
            lines.append(
                f"CPU per call-second, {w} workers ÷ {workers[0]} at the same calls per worker: "
                f"{ratios} (1.00 = no cost from sharing)"
            )
    return lines


async def ramp(
    label: dict[str, Any],
    loads: Sequence[int],
    load_argv: Sequence[str],
    run_dir: Path,
    conversation: load.Conversation,
    lag_ms: float,
    show: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Run the load benchmark (bridge only, its other arguments ``load_argv``) at each of
    ``loads`` calls until a step does not keep up; the steps, each ``label`` plus ``calls``,
    ``keeps_up``, ``verdict`` and ``result``."""
    steps: list[dict[str, Any]] = []
    for n in loads:
        load_args = load.parse_args(["--calls", str(n), "--systems", "bridge", *load_argv])
        print(", ".join(f"{v} {k}" for k, v in label.items()) + f", {n} calls …", flush=True)
        phase = load.Phase("bridge", n, load_args, conversation, run_dir)
        result = await load.run_phase(phase)
        ok, verdict = keeps_up(result, lag_ms)
        step = label | {"calls": n, "keeps_up": ok, "verdict": verdict, "result": result}
        steps.append(step)
        print(show(step), flush=True)
        if not ok:
            break
    return steps


async def run(args: argparse.Namespace) -> dict[str, Any]:
    conversation = load.build_conversation()
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callbridge-scaling-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for workers in args.workers:
            run_dir = workdir / f"w{workers}"
            run_dir.mkdir(exist_ok=True)
            load_argv = ["--duration", str(args.duration), "--stagger", str(args.stagger)]
            load_argv += ["--workers", str(workers), "--worker-cpu", str(args.worker_cpu)]
            loads = [workers * per_worker for per_worker in args.per_worker]
            steps += await ramp(
                {"workers": workers}, loads, load_argv, run_dir, conversation, args.lag_ms, row
            )
    return {
        "meta": {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "cores": load.os.cpu_count(),
            "worker_cpu": args.worker_cpu,
            "lag_ms": args.lag_ms,
            "duration_s": args.duration,
        },
        "steps": steps,
        "summary": summary(steps, args.workers, args.worker_cpu),
    }


def add_ramp_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every ramp script shares: call length, stagger, the keep-up rule, output."""
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per call (15)")
    parser.add_argument("--stagger", type=float, default=1.0, help="call starts spread (1 s)")
    parser.add_argument(
        "--lag-ms", type=float, default=10.0, help="keeps up: median chunk lag at most (10 ms)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep logs, DBs and dumps")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (1,2)")
    parser.add_argument(
        "--per-worker", default="70,85,100,115,130",
        help="the ramp: calls per worker (70,85,100,115,130)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-cpu", type=float, default=0.35, help="CPU cap per worker, in cores (0.35)"
    )
    add_ramp_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
        args.per_worker = sorted(int(c) for c in args.per_worker.split(",") if c.strip())
    except ValueError:
        parser.error("--workers and --per-worker: comma-separated whole numbers")
    if not args.workers or any(w < 1 for w in args.workers):
        parser.error("--workers: one or more counts ≥ 1")
    if not args.per_worker or any(c < 1 for c in args.per_worker):
        parser.error("--per-worker: one or more loads ≥ 1")
    if max(args.workers) * max(args.per_worker) > load.MAX_CALLS:
        parser.error(f"--workers × --per-worker: at most {load.MAX_CALLS} calls")
    try:
        load.CpuCap(args.worker_cpu).check()
    except load.CpuCapError as exc:
        parser.error(f"--worker-cpu: {exc}")
    return args


def print_report(
    report: dict[str, Any],
    columns: Sequence[tuple[str, int]],
    show: Callable[[dict[str, Any]], str],
    legend: str,
    json_path: Path | None,
) -> None:
    """A ramp script's table of steps, its summary and legend; the JSON, if asked for."""
    print()
    print("  ".join(name.rjust(width) for name, width in columns))
    for step in report["steps"]:
        print(show(step))
    print()
    print("\n".join(report["summary"]))
    print("\n" + legend)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = event_loop.run(run(args), "auto")
    legend = (
        f"keeps up: 0 speech frames lost, no failed call, median chunk lag ≤ {args.lag_ms:g} ms;"
        "\nthrottled %: share of 10 ms quota periods in which the worker used up its quota;"
        "\nworker CPU %: each worker's CPU over the steady window (100 = one core)."
    )
    print_report(report, COLUMNS, row, legend, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
