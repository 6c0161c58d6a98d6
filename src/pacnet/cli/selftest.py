"""``pacnet selftest [--device D] [--quick]``: does pacnet work on this machine's hardware?
Exactness under the device's optimizer kernels and precisions, a short run of every
benchmark with every method, and the bench ratios (:mod:`pacnet.experiments.selftest`);
exit status 1 if any case fails. It says at the start what it runs and how long that took
on 2 CPU cores."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pacnet.cli.common import Named, debug_flag, device_flag
from pacnet.experiments.selftest.cases import FAIL
from pacnet.experiments.selftest.main import selftest
from pacnet.training.device import check_device


def add_parser(sub: Any, named: Named) -> None:
    """The ``selftest`` command and its flags."""
    parser = sub.add_parser(
        "selftest",
        help="check that pacnet works on this machine's device (exit 1 if not)",
        description="Check that pacnet works on this machine's device: exactness under its "
        "optimizer kernels and precisions, a short run of every benchmark with every method, "
        "both engines, the bench ratios. The full selftest took about 3 min on 2 CPU cores "
        "(with Fashion-MNIST and the digits installed), --quick about 25 s; the first line "
        "after the versions says what runs and how long it took there.",
    )
    device_flag(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the fast checks only: fewer steps and repeats, no Fashion-MNIST or digits runs "
        "(about 25 s on 2 CPU cores)",
    )
    debug_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Run every case, a line each; exit 1 if any failed."""
    cases = selftest(check_device(args.device), args.quick, lambda line: print(line, flush=True))
    if any(c.mark == FAIL for c in cases):
        sys.exit(1)
