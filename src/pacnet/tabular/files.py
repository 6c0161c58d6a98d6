"""Reading and writing the user's tables: CSV (any common dialect) and Parquet.

A :class:`Table` is a file's header and rows. Columns are chosen by name
(:meth:`Table.numbers`): a missing name fails in one line naming the nearest match, and a
cell that is not a finite number names the file, the line (CSV) or row (Parquet) and the
column. Columns that are not asked for are never parsed, so an id or text column may sit
beside the data.

CSV files may be UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order mark or
Windows-1252; gzip-compressed (``.gz``); comma, semicolon, tab or ``|`` separated (the
separator is the one the header row uses most; ``.tsv`` means tab); with any line endings
and quoted fields. Blank lines and rows of empty cells are skipped; names are stripped of
surrounding spaces. Parquet needs ``pyarrow`` (``pip install 'pacnet[parquet]'``).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pacnet.errors import PacnetError, check, first_line
from pacnet.io import check_text, write_bytes_atomic

PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATORS = (",", ";", "\t", "|")
_MISSING = {"", "na", "n/a", "nan", "null", "none", "nil", "?", "-", "#n/a"}
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


def is_parquet(path: str | Path) -> bool:
    """Whether ``path`` names a Parquet file (by its suffix)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


class Table:
    """A table read from a file: column names in file order and ``rows`` data rows.

    Subclasses hold the cells; every check on them goes through this interface.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], rows: int):
        self.path = str(path)
        self.columns = list(columns)
        self.rows = rows
        self._check_names()

    def _check_names(self) -> None:
        seen: dict[str, int] = {}
        for i, name in enumerate(self.columns):
            if not name:
                continue  # an unnamed column (e.g. after a trailing separator) is never used
            if name in seen:
                raise PacnetError(
                    f"{self.path}: the column name {name!r} appears twice (columns "
                    f"{seen[name] + 1} and {i + 1}); rename one"
                )
            seen[name] = i

    def where(self, row: int) -> str:
        """Where data row ``row`` (0-based) is, for messages: ``line 7`` or ``row 6``."""
        return f"row {row + 1}"

    def require(self, names: Sequence[str], what: str) -> None:
        """Fail in one line unless every name is a column, naming the nearest match."""
        for name in names:
            if name not in self.columns:
                raise PacnetError(f"{self.path}: no column {name!r} ({what}){self._hint(name)}")

    def _hint(self, name: str) -> str:
        named = [c for c in self.columns if c]
        folded = {c.lower(): c for c in named}
        close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {folded[close[0]]!r}?"
        shown = ", ".join(named[:12]) + (f", … ({len(named) - 12} more)" if len(named) > 12 else "")
        hint = f"; its columns: {shown}"
        if named and all(_is_number(c) for c in named):
            hint += " (numbers: does the file lack a header row?)"
        return hint

    def numbers(self, names: Sequence[str], what: str, text_hint: str = "") -> np.ndarray:
        """The columns ``names`` as a float64 array (rows × names), every cell a finite
        number; ``what`` says what the columns are for (e.g. ``--inputs``), ``text_hint``
        what to do when a column holds words (added to that error)."""
        self.require(names, what)
        out = np.empty((self.rows, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            try:
                column = self._numeric(name)
            except _TextCell as exc:
                if not text_hint:
                    raise
                raise PacnetError(f"{exc} ({text_hint})") from None
            bad = np.flatnonzero(~np.isfinite(column))
            if bad.size:
                i = int(bad[0])
                cell = self._text(name, i)
                why = (
                    f"{cell!r} (NaN, a missing value); fill or drop the row"
                    if np.isnan(column[i])
                    else f"{cell!r} is not a finite number"
                )
                raise PacnetError(f"{self.path}, {self.where(i)}, column {name!r}: {why}")
            out[:, j] = column
        return out

    def values(self, name: str) -> list[Any]:
        """The cells of column ``name`` as they are (text from CSV, values from Parquet)."""
        raise NotImplementedError

    def _text(self, name: str, row: int) -> str:
        """Cell ``row`` of column ``name`` as text, for messages."""
        return str(self.values(name)[row]).strip()

    def _numeric(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _parse(self, name: str, cells: Sequence[Any]) -> np.ndarray:
        """Text cells as float64 (fast path); the first bad cell fails in one line."""
        try:
            return np.array(cells, dtype=np.float64)
        except (ValueError, TypeError):
            pass
        for i, cell in enumerate(cells):
            text = "" if cell is None else str(cell).strip()
            try:
                float(text)
            except ValueError:
                wordy = text.lower() not in _MISSING and not any(c.isdigit() for c in text)
                raise (_TextCell if wordy else PacnetError)(
                    f"{self.path}, {self.where(i)}, column {name!r}: {_why(text, self)}"
                ) from None
        raise PacnetError(f"{self.path}, column {name!r}: not a column of numbers")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _why(text: str, table: Table) -> str:
    if text.lower() in _MISSING:
        shown = "an empty cell" if not text else f"{text!r}"
        return f"{shown} (a missing value); fill or drop the row"
    why = f"{text!r} is not a number"
    if _DECIMAL_COMMA.match(text):
        why += " (a decimal comma? write 1.5, not 1,5)"
    return why


class _TextCell(PacnetError):
    """A cell of words where a number belongs (the column is likely text, not numbers)."""


class ArrayTable(Table):
    """Rows made in memory (a generated source table), one float column per name."""

    def __init__(
        self,
        path: str,
        columns: Sequence[str],
        values: np.ndarray,
        origin: dict[str, Any] | None = None,
    ):
        self._values = np.asarray(values, dtype=np.float64)
        self.origin = dict(origin or {})
        """How the rows were made (for the card)."""
        super().__init__(path, columns, len(self._values))

    def values(self, name: str) -> list[Any]:
        return self._values[:, self.columns.index(name)].tolist()

    def _numeric(self, name: str) -> np.ndarray:
        return self._values[:, self.columns.index(name)].copy()


class CsvTable(Table):
    """A delimited text file, every cell kept as text until a column is asked for."""

    def __init__(
        self, path: str | Path, header: Sequence[str], cells: list[list[str]], lines: list[int]
    ):
        self._cells = cells
        self._lines = lines
        super().__init__(path, [h.strip() for h in header], len(cells))

    def where(self, row: int) -> str:
        return f"line {self._lines[row]}"

    def values(self, name: str) -> list[Any]:
        j = self.columns.index(name)
        return [row[j] for row in self._cells]

    def _numeric(self, name: str) -> np.ndarray:
        return self._parse(name, self.values(name))


class ParquetTable(Table):
    """A Parquet file read with pyarrow."""

    def __init__(self, path: str | Path, table: Any):
        self._table = table
        super().__init__(path, list(table.column_names), table.num_rows)

    def values(self, name: str) -> list[Any]:
        return self._table.column(self.columns.index(name)).to_pylist()

    def _numeric(self, name: str) -> np.ndarray:
        import pyarrow as pa

        column = self._table.column(self.columns.index(name))
        if column.null_count:
            i = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise PacnetError(
                f"{self.path}, {self.where(i)}, column {name!r}: a missing value (null); "
                "fill or drop the row"
            )
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
        ):
            return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return self._parse(name, column.to_pylist())
        raise PacnetError(f"{self.path}, column {name!r}: holds {kind} values, not numbers")


def read_table(path: str | Path) -> Table:
    """Read a CSV (or TSV, optionally gzipped) or Parquet file; one-line errors for a
    missing, empty or malformed file, duplicate column names or a file without data rows."""
    path = Path(path)
    check(path.exists(), f"{path}: file not found")
    check(path.is_file(), f"{path}: not a file")
    table = _read_parquet(path) if is_parquet(path) else _read_csv(path)
    check(table.rows > 0, f"{path}: no data rows (only a header)")
    return table


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PacnetError(
            f"{path}: reading Parquet needs pyarrow: pip install 'pacnet[parquet]'"
        ) from None
    check(path.stat().st_size > 0, f"{path}: empty file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise PacnetError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return ParquetTable(path, table)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise PacnetError(f"{path}: not a readable gzip file ({first_line(exc)})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise PacnetError(f"{path}: not valid UTF-16 text") from None
    check_text(path, raw)
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _separator(path: Path, header: str) -> str:
    stem = path.name.lower().removesuffix(".gz")
    if stem.endswith((".tsv", ".tab")):
        return "\t"
    outside = re.sub(r'"[^"]*"', "", header)  # separators inside quoted names do not count
    counts = {sep: outside.count(sep) for sep in _SEPARATORS}
    best = max(_SEPARATORS, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _read_csv(path: Path) -> Table:
    text = _decode(path).lstrip("\ufeff")
    check(text.strip(), f"{path}: empty file (no header row)")
    first = next(line for line in text.splitlines() if line.strip())
    separator = _separator(path, first)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=separator, skipinitialspace=separator != "\t"
    )
    header: list[str] | None = None
    cells: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not "".join(row).strip():
                continue  # a blank line, or a row of empty cells
            if header is None:
                header = row
                width = len(header)
                continue
            if len(row) != width:
                extra = row[width:]
                check(
                    len(row) > width and not any(c.strip() for c in extra),
                    f"{path}, line {reader.line_num}: {len(row)} cells, but the header names "
                    f"{width} columns",
                )
                row = row[:width]
            cells.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise PacnetError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    assert header is not None
    return CsvTable(path, header, cells, lines)


WRITES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
"""The file names :func:`write_table` writes, by how they end."""


def check_table_out(path: str | Path) -> None:
    """Fail in one line unless :func:`write_table` can write ``path``: a name ending in one
    of :data:`WRITES` that is not a folder, or ``-`` (standard output)."""
    if str(path) == "-":
        return
    path = Path(path)
    check(not path.is_dir(), f"{path}: is a directory; name a file to write")
    if not path.name.lower().endswith(WRITES):
        gz = path.suffix.lower() == ".gz"
        kind = (
            "".join(path.suffixes[-2:] if gz else path.suffixes[-1:]) or "a name without a suffix"
        )
        raise PacnetError(
            f"{path}: cannot write {kind}; name a {', '.join(WRITES[:-1])} or {WRITES[-1]} "
            "file, or - for standard output"
        )


def write_table(path: str | Path, columns: Mapping[str, Sequence[Any]]) -> None:
    """Write ``columns`` (name -> values, in order) atomically as the name says (see
    :data:`WRITES`): CSV, TSV (tab-separated), either gzip-compressed (``.gz``), or Parquet;
    ``-`` writes CSV to standard output. Any other name fails in one line before anything
    is written. Floats are written with the shortest text that reads back as the same
    float64."""
    check_table_out(path)
    names = list(columns)
    if str(path) != "-" and is_parquet(path):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PacnetError(
                f"{path}: writing Parquet needs pyarrow: pip install 'pacnet[parquet]'"
            ) from None
        table = pa.table({name: list(columns[name]) for name in names})
        write_bytes_atomic(path, lambda tmp: pq.write_table(table, tmp))
        return
    name = Path(str(path)).name.lower().removesuffix(".gz")
    buffer = io.StringIO(newline="")
    writer = csv.writer(
        buffer, delimiter="\t" if name.endswith(".tsv") else ",", lineterminator="\n"
    )
    writer.writerow(names)
    rows = zip(*(columns[n] for n in names), strict=True)
    writer.writerows([_cell(v) for v in row] for row in rows)
    if str(path) == "-":
        sys.stdout.write(buffer.getvalue())
        return
    data = buffer.getvalue().encode()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)
