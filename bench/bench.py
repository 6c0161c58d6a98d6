"""Run the performance benchmark (the same as ``pacnet bench``): python bench/bench.py [--quick]."""

import json
import sys

from pacnet.experiments.perf import run_all, summary

if __name__ == "__main__":
    report = run_all(quick="--quick" in sys.argv)
    print(json.dumps(report, indent=2) if "--json" in sys.argv else summary(report))
