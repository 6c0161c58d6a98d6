"""Reading and writing the user's tables (pacnet.tabular.files): CSV dialects, Parquet,
every bad cell in one line, a binary file refused, and a file written as its name says."""

from __future__ import annotations

import gzip
import re
import sys

import numpy as np
import pytest

from pacnet import PacnetError
from pacnet.tabular import Scaling, read_table, write_table


def _write(path, text: str, encoding: str = "utf-8", newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


@pytest.mark.parametrize(
    "name,text,encoding,newline",
    [
        ("plain.csv", "x1,x2,y\n1,2,3\n4,5,6\n", "utf-8", "\n"),
        ("windows.csv", "x1,x2,y\n1,2,3\n4,5,6\n", "utf-8", "\r\n"),
        ("old-mac.csv", "x1,x2,y\n1,2,3\n4,5,6\n", "utf-8", "\r"),
        ("bom.csv", "\ufeffx1,x2,y\n1,2,3\n4,5,6\n", "utf-8", "\n"),
        ("quoted.csv", '"x1", "x2" ,"y"\n"1",2,3\n4,"5",6\n', "utf-8", "\n"),
        ("semicolon.csv", "x1;x2;y\n1;2;3\n4;5;6\n", "utf-8", "\n"),
        ("tabs.tsv", "x1\tx2\ty\n1\t2\t3\n4\t5\t6\n", "utf-8", "\n"),
        ("pipes.txt", "x1|x2|y\n1|2|3\n4|5|6\n", "utf-8", "\n"),
        ("utf16.csv", "x1,x2,y\n1,2,3\n4,5,6\n", "utf-16", "\r\n"),  # BOM by the codec
        ("blank-lines.csv", "\nx1,x2,y\n\n1,2,3\n,,\n4,5,6\n\n", "utf-8", "\n"),
        ("trailing-sep.csv", "x1,x2,y,\n1,2,3,\n4,5,6,\n", "utf-8", "\n"),
        ("spaces.csv", " x1 , x2 , y \n 1 , 2 , 3 \n4,5,6\n", "utf-8", "\n"),
        ("scientific.csv", "x1,x2,y\n1e0,+2,3.0\n4,5E0,6\n", "utf-8", "\n"),
    ],
)
def test_csv_dialects_read_the_same(tmp_path, name, text, encoding, newline):
    table = read_table(_write(tmp_path / name, text, encoding, newline))
    assert [c for c in table.columns if c] == ["x1", "x2", "y"]
    np.testing.assert_array_equal(table.numbers(["y", "x1"], "test"), [[3, 1], [6, 4]])


def test_names_with_commas_and_non_ascii_and_cp1252(tmp_path):
    text = '"Temp, °C",Druck,y\n20,1,3\n21,2,4\n'
    path = tmp_path / "excel.csv"
    path.write_bytes(text.encode("cp1252"))
    table = read_table(path)
    assert table.columns == ["Temp, °C", "Druck", "y"]
    assert table.numbers(["Temp, °C"], "test")[:, 0].tolist() == [20, 21]


def test_gzip_and_integer_columns_and_unused_text_columns(tmp_path):
    path = tmp_path / "rows.csv.gz"
    path.write_bytes(gzip.compress(b"id,name,x,y\n1,alpha,10,3\n2,beta,20,4\n"))
    table = read_table(path)
    assert table.numbers(["x", "id"], "test").tolist() == [[10, 1], [20, 2]]
    assert table.values("name") == ["alpha", "beta"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty file"),
        ("\n\n  \n", "empty file"),
        ("x1,x2,y\n", "no data rows"),
        ("x1,x2,x1\n1,2,3\n", "'x1' appears twice \\(columns 1 and 3\\)"),
        ("x1,x2,y\n1,2,3\n4,5\n", "line 3: 2 cells, but the header names 3 columns"),
    ],
)
def test_malformed_files_fail_in_one_line(tmp_path, text, match):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(PacnetError, match=match) as info:
        read_table(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "cell,match",
    [
        ("abc", r"line 3, column 'x2': 'abc' is not a number"),
        ("", r"line 3, column 'x2': an empty cell \(a missing value\)"),
        ("NA", r"line 3, column 'x2': 'NA' \(a missing value\)"),
        ("nan", r"line 3, column 'x2': 'nan' \(NaN, a missing value\)"),
        ("inf", r"line 3, column 'x2': 'inf' is not a finite number"),
        ("1,5", r"'1,5' is not a number \(a decimal comma"),
    ],
)
def test_bad_cells_name_file_line_and_column(tmp_path, cell, match):
    sep = ";" if "," in cell else ","
    path = _write(tmp_path / "t.csv", f"x1{sep}x2{sep}y\n1{sep}2{sep}3\n4{sep}{cell}{sep}6\n")
    with pytest.raises(PacnetError, match=match) as info:
        read_table(path).numbers(["x1", "x2"], "--inputs")
    assert str(info.value).startswith(str(path))


def test_bad_cells_in_unused_columns_are_ignored(tmp_path):
    path = _write(tmp_path / "t.csv", "x1,note,y\n1,n/a,3\n4,,6\n")
    assert read_table(path).numbers(["x1", "y"], "test").tolist() == [[1, 3], [4, 6]]


def test_missing_column_names_the_nearest_match(tmp_path):
    table = read_table(_write(tmp_path / "t.csv", "x1,x2,Temperature\n1,2,3\n"))
    with pytest.raises(PacnetError, match=r"no column 'temprature' \(--inputs\); did you mean "):
        table.numbers(["temprature"], "--inputs")
    with pytest.raises(PacnetError, match="its columns: x1, x2, Temperature"):
        table.numbers(["zzz"], "--inputs")
    headless = read_table(_write(tmp_path / "h.csv", "0.5,1.5\n2,3\n"))
    with pytest.raises(PacnetError, match="does the file lack a header row"):
        headless.numbers(["x"], "--inputs")


def test_write_table_round_trips_floats_exactly(tmp_path):
    values = np.random.default_rng(0).standard_normal(50) * 1e-3
    path = tmp_path / "out" / "pred.csv"
    write_table(path, {"id": list(range(50)), "y": values})
    table = read_table(path)
    assert table.values("id")[:2] == ["0", "1"]
    assert np.array_equal(table.numbers(["y"], "test")[:, 0], values)


def test_scaling_never_divides_by_zero():
    source = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    target = np.array([[0.0, 4.0], [1.0, 8.0]])
    scaling = Scaling.fit(["a", "const"], source, target)
    assert scaling.constant == ("const",)
    assert scaling.scale[1] == pytest.approx(2.0)  # the target's spread
    alone = Scaling.fit(["a", "const"], source, np.array([[0.0, 5.0], [1.0, 5.0]]))
    assert alone.scale[1] == 1.0  # constant everywhere: centred only
    z = alone.apply(source)
    assert bool(z.isfinite().all()) and z[:, 1].abs().max() == 0
    np.testing.assert_allclose(alone.invert(z), source)
    assert Scaling.from_dict(scaling.to_dict()) == scaling


def test_parquet_reads_numbers_and_names_null_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    table = pa.table({"x": [1, 2, 3], "s": ["1.5", "2", "x"], "y": [0.5, None, 1.0]})
    pq.write_table(table, path)
    read = read_table(path)
    assert read.numbers(["x"], "test")[:, 0].tolist() == [1, 2, 3]
    with pytest.raises(PacnetError, match=r"row 2, column 'y': a missing value \(null\)"):
        read.numbers(["y"], "test")
    with pytest.raises(PacnetError, match=r"row 3, column 's': 'x' is not a number"):
        read.numbers(["s"], "test")
    out = tmp_path / "o.parquet"
    write_table(out, {"y": np.array([1.25, 2.5])})
    assert read_table(out).numbers(["y"], "test")[:, 0].tolist() == [1.25, 2.5]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PacnetError, match=r"needs pyarrow: pip install 'pacnet\[parquet\]'"):
        read_table(path)


@pytest.mark.parametrize("name", ["p.csv", "p.tsv", "p.csv.gz", "p.tsv.gz"])
def test_write_table_writes_what_the_name_says(tmp_path, name):
    path = tmp_path / name
    write_table(path, {"id": ["a", "b"], "y": [1.5, -2.0]})
    text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else None
    text = text if text is not None else path.read_text()
    assert text.splitlines()[0] == ("id\ty" if ".tsv" in name else "id,y")
    assert read_table(path).numbers(["y"], "test")[:, 0].tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"PAR1\x15\x04\x15\x10\x00\x00", "a Parquet file; name it .parquet"),
        (gzip.compress(b"x,y\n1,2\n"), "gzip-compressed"),
        (b"PK\x03\x04\x14\x00\x06\x00", "a zip archive"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text table (binary data)"),
    ],
)
def test_a_binary_file_is_not_read_as_a_table(tmp_path, data, words):
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    with pytest.raises(PacnetError, match=re.escape(words)) as caught:
        read_table(path)
    assert str(path) in str(caught.value) and "cells" not in str(caught.value)
