"""Instances on one database: the calls 1 and 2 separate bridge servers carry on a shared
PostgreSQL, beside one server on SQLite, and what PostgreSQL itself spends on them.

    .venv/bin/python benchmarks/instances.py --database postgresql://postgres@127.0.0.1/test \\
        [--configs sqlite:1,postgres:1,postgres:2 --instance-cpu 0.35 \\
         --per-instance 70,85,100,115,130 --duration 15 --json out.json]

Every configuration ``DATABASE:K`` runs K separate ``callbridge serve`` processes (each its
own port, directory and connection pool; nothing shared but the database), each capped at the
same fraction of a core (``--instance-cpu``, a cgroup quota, as in ``scaling.py``: two
instances cannot each have a core of their own on a machine of two cores that also runs the
load generator, the fixtures and PostgreSQL). For every per-instance load C the load
benchmark (``load.py --instances K``, bridge only, the same calls and method) runs K × C calls,
call i on instance i mod K. A step *keeps up* as in ``scaling.py`` (no speech frame lost, no
failed call, median chunk lag ≤ ``--lag-ms``); the capacity of a configuration is its largest
step that kept up, every smaller one keeping up too.

PostgreSQL's own CPU (``load.py``: every ``postgres`` process of the machine, and the backends
serving the bridge's connections) over each step's steady window gives the database's cost
per call-second; its inverse is the calls one PostgreSQL core would carry, and divided by
what one instance carries, the instances one database core supports.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import load
from scaling import add_ramp_arguments, capacity, print_report, ramp

from callbridge import event_loop

COLUMNS = (
    ("database", 8), ("inst", 4), ("calls", 5), ("CPU ms/call-s", 13), ("inst CPU %", 10),
    ("lag p50", 7), ("lost", 4), ("hook p50", 8), ("hook p99", 8), ("pg %", 5),
    ("pg bknd %", 9), ("pg ms/call-s", 12), ("busy%", 5), ("keeps up", 8),
)  # fmt: skip


def row(step: dict[str, Any]) -> str:
    result = step["result"]
    hook = result.get("commit_to_webhook_ms") or {}
    pg = result.get("postgres_cpu") or {}
    cells = [
        step["database"], str(step["instances"]), str(step["calls"]),
        f"{result['cpu_s_per_call_s'] * 1000:.2f}",
        "/".join(f"{v:.0f}" for v in result["worker_cpu_percent"]),
        load._ms(result["chunk_lag_live_ms"]["p50"]), str(result["frames"]["speech_lost"]),
        load._ms(hook.get("p50")), load._ms(hook.get("p99")),
        f"{pg['server_percent']:.1f}" if pg else "-",
        f"{pg['backends_percent']:.1f}" if pg else "-",
        f"{backend_ms_per_call_s(result):.3f}" if pg else "-",
        f"{result['cpu_percent']['machine']:.0f}", step["verdict"],
    ]  # fmt: skip
    return "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))


def backend_ms_per_call_s(result: dict[str, Any]) -> float:
    """CPU of the backends serving the bridge, in ms per call-second."""
    pg = result["postgres_cpu"]
    call_seconds = result["calls"] * result["window_s"]
    return 10 * pg["backends_percent"] * result["window_s"] / call_seconds


def summary(
    steps: Sequence[dict[str, Any]], configs: Sequence[tuple[str, int]], cap: float
) -> list[str]:
    lines = []
    found: dict[tuple[str, int], tuple[int | None, bool]] = {}
    for database, instances in configs:
        ramp = [s for s in steps if (s["database"], s["instances"]) == (database, instances)]
        calls, bounded = capacity(ramp)
        found[(database, instances)] = calls, bounded
        at = next((s for s in ramp if s["calls"] == calls), None)
        past = next((s for s in ramp if not s["keeps_up"]), None)
        text = f"{database}, {instances} instance{'s' if instances > 1 else ''}: "
        text += f"{'' if bounded else '≥ '}{calls or 0} calls at {cap:g} of a core each"
        if past is not None:
            # Whether the instances ran out of their cap, or the machine ran out of cores.
            used = "/".join(f"{v:.0f}" for v in past["result"]["worker_cpu_percent"])
            busy = past["result"]["cpu_percent"]["machine"]
            text += f" (next step: instances at {used}% of a core, machine {busy:.0f}% busy)"
        if at is not None:
            result = at["result"]
            hook = (result.get("commit_to_webhook_ms") or {}).get("p99")
            text += f"; webhook p99 {load._ms(hook)} ms"
            if result.get("postgres_cpu"):
                pg = result["postgres_cpu"]
                text += (
                    f"; PostgreSQL {pg['server_percent']:.1f}% of a core "
                    f"({pg['backends_percent']:.1f}% in the bridge's backends)"
                )
        lines.append(text)

    def ratio(label: str, a: tuple[int | None, bool], b: tuple[int | None, bool]) -> None:
        if a[0] and b[0] and a[1] and b[1]:
            lines.append(f"{label}: {a[0] / b[0]:.2f}× the calls")
        elif a[0] and b[0]:
            lines.append(f"{label}: not measured (a ramp found no limit: raise --per-instance)")

    one = found.get(("postgres", 1))
    for (database, instances), more in found.items():
        if database == "postgres" and instances > 1 and one:
            ratio(f"postgres, 1 → {instances} instances (linear: {instances}×)", more, one)
    sqlite = found.get(("sqlite", 1))
    if sqlite and one:
        ratio("postgres ÷ sqlite, one instance", one, sqlite)
    pg_costs = sorted(
        backend_ms_per_call_s(s["result"])
        for s in steps
        if s["keeps_up"] and s["result"].get("postgres_cpu")
    )
    if pg_costs and one and one[0]:
        median = pg_costs[len(pg_costs) // 2]
        per_instance_core = one[0] / cap
        lines.append(
            f"PostgreSQL backends: {pg_costs[0]:.3f}-{pg_costs[-1]:.3f} ms of CPU per "
            f"call-second, median {median:.3f} (steps that kept up): one PostgreSQL core ≈ "
            f"{1000 / median:.0f} calls ({1000 / pg_costs[-1]:.0f} at the highest), ≈ "
            f"{1000 / median / per_instance_core:.1f} instances of one core each "
            f"({per_instance_core:.0f} calls per instance core, scaled from {cap:g})"
        )
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    conversation = load.build_conversation()
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callbridge-instances-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for database, instances in args.configs:
            run_dir = workdir / f"{database}-{instances}"
            run_dir.mkdir(exist_ok=True)
            load_argv = ["--duration", str(args.duration), "--stagger", str(args.stagger)]
            load_argv += ["--instances", str(instances), "--worker-cpu", str(args.instance_cpu)]
            load_argv += ["--database", args.database if database == "postgres" else "sqlite"]
            loads = [instances * per_instance for per_instance in args.per_instance]
            label = {"database": database, "instances": instances}
            steps += await ramp(label, loads, load_argv, run_dir, conversation, args.lag_ms, row)
    return {
        "meta": {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "cores": load.os.cpu_count(),
            "instance_cpu": args.instance_cpu,
            "lag_ms": args.lag_ms,
            "duration_s": args.duration,
        },
        "steps": steps,
        "summary": summary(steps, args.configs, args.instance_cpu),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database", required=True, help="a postgresql:// URL (a fresh schema per run)"
    )
    parser.add_argument(
        "--configs", default="sqlite:1,postgres:1,postgres:2",
        help="DATABASE:INSTANCES to compare (sqlite:1,postgres:1,postgres:2)",
    )  # fmt: skip
    parser.add_argument(
        "--per-instance", default="70,85,100,115,130",
        help="the ramp: calls per instance (70,85,100,115,130)",
    )  # fmt: skip
    parser.add_argument(
        "--instance-cpu", type=float, default=0.35, help="CPU cap per instance, in cores (0.35)"
    )
    add_ramp_arguments(parser)
    args = parser.parse_args(argv)
    try:
        configs = []
        for item in args.configs.split(","):
            database, _, count = item.strip().partition(":")
            if database not in ("sqlite", "postgres"):
                raise ValueError(item)
            configs.append((database, int(count)))
        args.configs = configs
        args.per_instance = sorted(int(c) for c in args.per_instance.split(",") if c.strip())
    except ValueError:
        parser.error("--configs: sqlite:K or postgres:K, comma-separated; --per-instance: numbers")
    if not args.configs or any(k < 1 for _, k in args.configs):
        parser.error("--configs: one or more, each with at least one instance")
    if not args.database.startswith(("postgresql://", "postgres://")):
        parser.error("--database: a postgresql:// URL")
    if max(k for _, k in args.configs) * max(args.per_instance) > load.MAX_CALLS:
        parser.error(f"instances × --per-instance: at most {load.MAX_CALLS} calls")
    try:
        load.CpuCap(args.instance_cpu).check()
    except load.CpuCapError as exc:
        parser.error(f"--instance-cpu: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = event_loop.run(run(args), "auto")
    legend = (
        f"keeps up: 0 speech frames lost, no failed call, median chunk lag ≤ {args.lag_ms:g} ms;"
        "\ninst CPU %: each instance's CPU over the steady window (100 = one core);"
        "\npg %: every PostgreSQL process of the machine; pg bknd %: the backends serving the"
        "\nbridge's connections; pg ms/call-s: the backends' CPU per call-second."
    )
    print_report(report, COLUMNS, row, legend, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
