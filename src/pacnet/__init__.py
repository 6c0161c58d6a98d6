"""pacnet — PAC-Net pruning-based inductive transfer learning for PyTorch.

Prune a source model (:func:`prune` → :class:`Mask`), Allocate its essential weights to the
source task (:func:`allocate`), Calibrate the redundant weights on the target task
(:func:`calibrate`); one network then serves both, and the source model comes back bit for
bit (:meth:`Tasks.use`, :func:`load`). :func:`train_only` makes exact masked training
available inside your own training loop.
"""

from pacnet.core.checkpoint import load, load_tasks, save, save_network
from pacnet.core.freeze import train_only
from pacnet.core.mask import Mask, prunable_names, prune
from pacnet.core.pac import (
    allocate,
    calibrate,
    parameter_report,
    print_trainable_parameters,
    zero_redundant,
)
from pacnet.core.tasks import Tasks, per_task_names
from pacnet.errors import PacnetError, pacnet_version
from pacnet.training.train import Data, FitConfig, evaluate, fit

__version__ = pacnet_version()

__all__ = [
    "Data",
    "FitConfig",
    "Mask",
    "PacnetError",
    "Tasks",
    "__version__",
    "allocate",
    "calibrate",
    "evaluate",
    "fit",
    "load",
    "load_tasks",
    "parameter_report",
    "per_task_names",
    "print_trainable_parameters",
    "prunable_names",
    "prune",
    "save",
    "save_network",
    "train_only",
    "zero_redundant",
]
