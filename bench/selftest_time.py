"""How long ``pacnet selftest --device cpu --quick`` takes, run as a user runs it.

    python bench/selftest_time.py [--runs N] [--command "bench --quick"] [--json]

Runs the command N times (3 by default), each in a fresh process, and reports per run and
as the median: wall seconds, the CPU seconds (user + sys) of the process and its children,
and the load average (1 min) before and after, with the machine's cores. The CPU seconds
are what the command itself needed; the wall seconds also hold what other work on the
machine took from it. ``--command`` times another ``pacnet`` command the same way (e.g.
``"bench --quick"``). A timing here is a measurement, never a test threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: list[str]) -> dict[str, float | int]:
    """One run of ``pacnet argv`` in a fresh process: wall and CPU seconds, exit status,
    the 1-minute load average before and after."""
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pacnet", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(_children_cpu() - cpu_before, 1),
        "exit": done.returncode,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="how many times (3)")
    parser.add_argument(
        "--command",
        default="selftest --device cpu --quick",
        help="the pacnet command to time (default: 'selftest --device cpu --quick')",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    argv = shlex.split(args.command)
    runs = []
    for i in range(args.runs):
        runs.append(time_once(argv))
        if not args.json:
            r = runs[-1]
            print(
                f"run {i + 1}: {r['wall_s']} s wall, {r['cpu_s']} s CPU (user+sys), exit "
                f"{r['exit']}, load {r['load_before']} -> {r['load_after']}",
                flush=True,
            )
    report = {
        "command": f"pacnet {args.command}",
        "cores": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['command']} on {report['cores']} cores: median {report['median_wall_s']} s "
            f"wall, {report['median_cpu_s']} s CPU over {len(runs)} runs"
        )
    return 1 if any(r["exit"] != 0 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
