"""Several targets in one PAC-Net network vs one network per target (Friedman #1).

    python bench/multitarget.py [--chains 5] [--size 50] [--full]

Chain r (r = 0..chains-1) serves the targets of seeds 3r+1, 3r+2, 3r+3 in sequence from one
network (training seed r); after each addition every task is scored on its test set. For
reference, the same targets are run with single-target PAC-Net and with fine-tuning (each
a network of its own). Prints a Markdown table; results go to runs/multitarget/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pacnet.experiments.runner import RunSpec, run


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=5)
    parser.add_argument("--size", type=int, default=50, help="target samples per target")
    parser.add_argument("--full", action="store_true", help="paper-scale budgets, not --quick")
    parser.add_argument("--out", type=Path, default=Path("runs/multitarget"))
    args = parser.parse_args()
    start = time.perf_counter()
    quick = not args.full
    chains, singles = [], {"pacnet": {}, "finetune": {}}
    for r in range(args.chains):
        targets = (3 * r + 1, 3 * r + 2, 3 * r + 3)
        spec = RunSpec(
            "friedman", "pacnet", seed=r, target_size=args.size, quick=quick, targets=targets
        )
        chains.append(run(spec, args.out / f"chain{r}"))
        for method in singles:
            for t in targets:
                single = RunSpec("friedman", method, seed=t, target_size=args.size, quick=quick)
                singles[method][t] = run(single, args.out / f"{method}-{t}")["target_test"]
    rows = ["| after adding | source | T1 | T2 | T3 |", "|---|---|---|---|---|"]
    for k in range(3):
        cells = []
        for task in ("source", 0, 1, 2):
            if task != "source" and task > k:
                cells.append("—")
                continue
            values = []
            for c in chains:
                name = "source" if task == "source" else str(c["targets"][task])
                values.append(c["chain"]["steps"][k]["scores"][name])
            cells.append(mean_sd(values))
        rows.append(f"| T{k + 1} | " + " | ".join(cells) + " |")
    source_before = [c["source_test_before"] for c in chains]
    for method, label in (
        ("pacnet", "PAC-Net, one network per target"),
        ("finetune", "fine-tuning, one network per target"),
    ):
        cells = [mean_sd([singles[method][c["targets"][k]] for c in chains]) for k in range(3)]
        src = "(as after T1)" if method == "pacnet" else "(forgets)"
        rows.append(f"| {label} | {src} | " + " | ".join(cells) + " |")
    rows.append(f"| source model before pruning | {mean_sd(source_before)} | | | |")
    exact = all(c["chain"]["earlier_tasks_bit_identical"] for c in chains)
    shares = chains[0]["chain"]["owned"]
    table = "\n".join(rows)
    print(
        f"Friedman #1, {'quick' if quick else 'full'} budgets, N = {args.size} per target, "
        f"{args.chains} chains (targets 3r+1..3r+3); test RMSE mean ± sd\n\n{table}\n\n"
        f"earlier tasks bit-identical after every addition: {exact}; weights owned in chain 0: "
        f"{shares}; {time.perf_counter() - start:.0f} s"
    )
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps({"exact": exact, "owned": shares}, indent=2))


if __name__ == "__main__":
    main()
