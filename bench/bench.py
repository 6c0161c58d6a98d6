"""Run the performance benchmark, the same as ``pacnet bench`` with the same flags:
python bench/bench.py [--device cuda] [--quick] [--json] ..."""

import sys

from pacnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
