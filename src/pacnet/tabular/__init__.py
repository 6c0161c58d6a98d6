"""Your own data: PAC-Net from a source table to a target table (``pacnet transfer``), and
the folder it writes read back for predictions (``pacnet predict``, :func:`open_artifact`).

    outcome = transfer(TransferOptions(Path("sim.csv"), Path("measured.csv"), outputs=["y"]))
    write_artifact(outcome, "model")
    open_artifact("model").predict_columns({"x1": [0.1], "x2": [0.5]}, task="target")
"""

from pacnet.tabular.artifact import Artifact, find_card, open_artifact, write_artifact
from pacnet.tabular.files import Table, read_table, write_table
from pacnet.tabular.pipeline import Outcome, TransferOptions, transfer
from pacnet.tabular.problem import Problem, Scaling, TableBenchmark, TableConfig

__all__ = [
    "Artifact",
    "Outcome",
    "Problem",
    "Scaling",
    "Table",
    "TableBenchmark",
    "TableConfig",
    "TransferOptions",
    "find_card",
    "open_artifact",
    "read_table",
    "transfer",
    "write_artifact",
    "write_table",
]
