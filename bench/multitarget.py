"""Several targets in one PAC-Net network vs one network per target (Friedman #1).

    python bench/multitarget.py [--chains 10] [--size 50] [--quick]

Chain r (r = 0..chains-1) serves the targets of seeds 3r+1, 3r+2, 3r+3 in sequence from one
network (``pacnet run --targets``, training seed r); after each addition every task is scored
on its test set. For reference the same targets run with one-target PAC-Net and with
fine-tuning (a network each). Prints the table ``pacnet report`` gives such runs; the
result.json files go to runs/multitarget/ (``pacnet report --results runs/multitarget``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pacnet.experiments.report.table import chain_markdown
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--size", type=int, default=50, help="target samples per target")
    parser.add_argument("--quick", action="store_true", help="the --quick budgets")
    parser.add_argument("--out", type=Path, default=Path("runs/multitarget"))
    args = parser.parse_args()
    start = time.perf_counter()
    chains, singles = [], []
    for r in range(args.chains):
        targets = (3 * r + 1, 3 * r + 2, 3 * r + 3)
        spec = RunSpec("friedman", "pacnet", r, args.size, args.quick, targets=targets)
        chains.append(run(spec, args.out / f"chain{r}"))
        for method in ("pacnet", "finetune"):
            for t in targets:
                single = RunSpec("friedman", method, t, args.size, args.quick)
                singles.append(run(single, args.out / f"{method}-{t}"))
    budgets = "quick" if args.quick else "default"
    print(f"Friedman #1, {budgets} budgets, N = {args.size} per target\n")
    print(chain_markdown(chains, singles, chains[0]["metric"]))
    print(f"\nowned weights (chain 0): {chains[0]['chain']['owned']}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
