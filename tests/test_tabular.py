"""``pacnet transfer`` and ``pacnet predict`` on generated tables, end to end, and every bad
input: one line, exit status 2, nothing written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import error_of

import pacnet
from pacnet.benchmarks.mlp import MLP
from pacnet.cli import main
from pacnet.tabular import artifact as artifact_module
from pacnet.tabular import open_artifact, pipeline, read_table, write_artifact

TINY = ["--source-steps", "300", "--target-steps", "60", "--hidden", "16,16"]


def smooth(x: np.ndarray, shift: float) -> np.ndarray:
    """A smooth function of three inputs; ``shift`` moves the target away from the source."""
    return np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + shift * x[:, 0] * x[:, 2] + 0.3 * shift


def write_csv(path, columns: dict, newline: str = "\n"):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator=newline)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values(), strict=True))
    return path


def tables(root, source_rows=600, target_rows=12, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1, 1, (source_rows, 3))
    xt = rng.uniform(-1, 1, (target_rows, 3))
    xn = rng.uniform(-1, 1, (40, 3))
    names = ["x1", "x2", "x3"]
    source = write_csv(
        root / "sim.csv", {**dict(zip(names, xs.T, strict=True)), "y": smooth(xs, 0.0)}
    )
    target = write_csv(
        root / "measured.csv", {**dict(zip(names, xt.T, strict=True)), "y": smooth(xt, 1.0)}
    )
    # new rows: columns in another order, an extra text column, no output
    new = write_csv(
        root / "new.csv",
        {"id": [f"r{i}" for i in range(40)], "x3": xn[:, 2], "x1": xn[:, 0], "x2": xn[:, 1]},
    )
    return source, target, new, xn


def read_column(path, name):
    return read_table(path).numbers([name], "test")[:, 0]


def test_transfer_then_predict_end_to_end(tmp_path, monkeypatch, capsys):
    source, target, new, xn = tables(tmp_path)
    out = tmp_path / "model"
    outcomes = []
    real = pipeline.transfer

    def keep(options):  # the network the command builds, to compare with what it wrote
        outcomes.append(real(options))
        return outcomes[-1]

    monkeypatch.setattr(pipeline, "transfer", keep)
    args = ["transfer", "--source", str(source), "--target", str(target), "--inputs",
            "x1,x2,x3", "--outputs", "y", "--out", str(out), "--compare", "finetune,l2sp",
            *TINY]  # fmt: skip
    assert main(args) == 0
    outcome = outcomes[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "card.json", "net.safetensors", "report.md", "report.png",
    ]  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["inputs"] == ["x1", "x2", "x3"] and card["outputs"] == ["y"]
    assert [m["method"] for m in card["methods"]] == ["pacnet", "finetune", "l2sp"]
    assert card["chosen_by"] == {"lam": "cross-validation", "ratio": "cross-validation"}
    assert len(card["methods"][0]["candidates"]) == 6
    report = (out / "report.md").read_text()
    for row in card["methods"]:
        assert f"| {row['method']} |" in report or f"| **{row['method']}** |" in report
        assert f"{row['cv']:.4g}" in report
    assert "source model as is" in report and "report.png" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    for task in ("source", "target"):
        pred = tmp_path / f"pred-{task}.csv"
        assert main(["predict", str(out), "--task", task, "--input", str(new), "--out",
                     str(pred), "--keep", "id"]) == 0  # fmt: skip
        assert next(csv.reader(pred.open()))[:2] == ["id", "y"]
        got = read_column(pred, "y")
        x = outcome.problem.x_scale.apply(xn)  # the card's input order, by name
        if task == "source":
            with torch.no_grad():  # the source model after Allocate, bit for bit
                expected = outcome.source_model.eval()(x)
                with outcome.tasks.use(outcome.model, "source"):
                    assert torch.equal(outcome.model(x), expected)
        else:
            with torch.no_grad():
                expected = outcome.model.eval()(x)
        assert np.array_equal(got, outcome.problem.y_scale.invert(expected)[:, 0])
    # the network file alone gives the same source model
    loaded = pacnet.load(out / "net.safetensors", MLP.from_spec(card["model"]), task="source")
    with torch.no_grad():
        x = outcome.problem.x_scale.apply(xn)
        assert torch.equal(loaded.eval()(x), outcome.source_model(x))

    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "card: pacnet transfer of" in shown and "inputs (3): x1, x2, x3" in shown
    assert "CV rmse on the target rows (3 folds): pacnet" in shown


def _fail(args, capsys) -> str:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pacnet: error: ")]
    assert errors == lines[-1:], err  # one error line, last (after any progress lines)
    return lines[-1]


@pytest.fixture
def good(tmp_path):
    source, target, new, _ = tables(tmp_path)
    return tmp_path, source, target, new


def _transfer(source, target, out, *extra, budgets=TINY):
    return ["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
            "--out", str(out), *budgets, *extra]  # fmt: skip


def _edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))
    return path


@pytest.mark.parametrize(
    "case,match",
    [
        ("misspelled", r"sim.csv: no column 'x_3' \(--inputs\); did you mean 'x3'\?"),
        ("missing-in-target", r"measured.csv: no column 'x3' \(--inputs\); its columns: "
                              r"x1, x2, y$"),
        ("text-cell", r"measured.csv, line 4, column 'x2': 'abc' is not a number \(a text "
         r"column: name it in --ignore"),
        ("nan-cell", r"sim.csv, line 3, column 'y': 'NaN' \(NaN, a missing value\)"),
        ("empty-cell", r"measured.csv, line 2, column 'x1': an empty cell"),
        ("few-rows", r"measured.csv: 2 target rows, fewer than the 3 cross-validation folds; "
                     r"add rows or pass --folds 2"),
        ("empty-file", r"sim.csv: empty file"),
        ("duplicate", r"sim.csv: the column name 'x2' appears twice \(columns 2 and 4\)"),
        ("both", r"'y' is named both as an input and as an output"),
        ("out-is-file", r"--out .*: exists and is not a folder"),
        ("no-outputs", r"--outputs is required"),
        ("bad-ratio", r"ratio must lie strictly between 0 and 1"),
        ("bad-method", r"unknown method 'finetun'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(good, capsys, case, match):
    root, source, target, _ = good
    out = root / "out"
    args = _transfer(source, target, out, "--inputs", "x1,x2,x3")
    if case == "misspelled":
        args = _transfer(source, target, out, "--inputs", "x1,x2,x_3")
    elif case == "missing-in-target":
        rows = [r.split(",") for r in target.read_text().splitlines()]
        target.write_text("\n".join(",".join(r[:2] + r[3:]) for r in rows) + "\n")  # no x3
    elif case == "text-cell":
        lines = target.read_text().splitlines()
        cells = lines[3].split(",")
        cells[1] = "abc"
        lines[3] = ",".join(cells)
        target.write_text("\n".join(lines) + "\n")
    elif case == "nan-cell":
        lines = source.read_text().splitlines()
        lines[2] = ",".join([*lines[2].split(",")[:3], "NaN"])
        source.write_text("\n".join(lines) + "\n")
    elif case == "empty-cell":
        lines = target.read_text().splitlines()
        lines[1] = "," + ",".join(lines[1].split(",")[1:])
        target.write_text("\n".join(lines) + "\n")
    elif case == "few-rows":
        target.write_text("\n".join(target.read_text().splitlines()[:3]) + "\n")
    elif case == "empty-file":
        source.write_text("")
    elif case == "duplicate":
        _edit(source, "x1,x2,x3,y", "x1,x2,x3,x2")
        args = _transfer(source, target, out, "--inputs", "x1,x3", "--outputs", "y")
    elif case == "both":
        args = _transfer(source, target, out, "--inputs", "x1,y")
    elif case == "out-is-file":
        out.write_text("not a folder")
    elif case == "no-outputs":
        args = [a for a in args if a not in ("--outputs", "y")]
    elif case == "bad-ratio":
        args += ["--ratio", "1.5"]
    elif case == "bad-method":
        args += ["--compare", "finetun"]
    assert match and __import__("re").search(match, _fail(args, capsys))
    assert not out.exists() or out.is_file()
    assert not list(root.glob(".out.*"))  # no staging folder left behind


def test_default_inputs_are_the_shared_columns(good, capsys):
    root, source, target, _ = good
    assert main([*_transfer(source, target, root / "m"), "--lam", "0.01", "--ratio", "0.8"]) == 0
    card = json.loads((root / "m" / "card.json").read_text())
    assert card["inputs"] == ["x1", "x2", "x3"]
    assert card["chosen_by"] == {"lam": "fixed", "ratio": "fixed"}
    assert len(card["methods"][0]["candidates"]) == 1  # the fixed setting, still scored by CV


def test_predict_matches_inputs_by_name_and_names_a_missing_one(good, capsys, monkeypatch):
    root, source, target, new = good
    out = root / "m"
    assert main([*_transfer(source, target, out, "--inputs", "x1,x2,x3"), "--lam", "0.01"]) == 0
    first, second = root / "a.csv", root / "b.csv"
    assert main(["predict", str(out), "--input", str(new), "--out", str(first)]) == 0
    rows = list(csv.reader(new.open()))
    order = [2, 0, 3, 1]  # x1, id, x2, x3: another order, the text column in the middle
    with open(root / "shuffled.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([[r[i] for i in order] + ["junk"] for r in rows])
    assert main(["predict", str(out), "--input", str(root / "shuffled.csv"), "--out",
                 str(second)]) == 0  # fmt: skip
    assert first.read_bytes() == second.read_bytes()
    _edit(root / "shuffled.csv", "x2", "X_2")
    line = _fail(["predict", str(out), "--input", str(root / "shuffled.csv")], capsys)
    assert "no column 'x2' (an input of the network); did you mean 'X_2'?" in line
    line = _fail(["predict", str(out), "--input", str(new), "--task", "other"], capsys)
    assert "--task other" in line and "source, target" in line
    monkeypatch.setattr(artifact_module, "PREDICT_CHUNK", 7)  # many rows go through in chunks
    chunked = open_artifact(out).predict_table(read_table(new))["y"]
    np.testing.assert_allclose(chunked, read_column(first, "y"), rtol=1e-6, atol=1e-6)
    # a card from another run than the network beside it is refused
    card = json.loads((out / "card.json").read_text())
    card["network"]["sha256"] = "0" * 64
    (out / "card.json").write_text(json.dumps(card))
    assert "checksums differ" in _fail(["predict", str(out), "--input", str(new)], capsys)


def test_source_checkpoint_of_another_architecture_is_refused(good, capsys):
    root, source, target, _ = good
    wrong = root / "wrong.safetensors"
    pacnet.save_network(wrong, MLP(4, (8,), 1), extra={"model": MLP(4, (8,), 1).spec()})
    args = _transfer(source, target, root / "o", "--inputs", "x1,x2,x3", budgets=TINY[:4])
    line = _fail([*args, "--source-checkpoint", str(wrong)], capsys)
    assert "is another architecture: MLP 4 -> 8 -> 1 (relu), 4 inputs and 1 outputs; this " \
           "transfer has 3 inputs and 1 outputs" in line  # fmt: skip
    right = root / "right.safetensors"
    pacnet.save_network(right, MLP(3, (8,), 1), extra={"model": MLP(3, (8,), 1).spec()})
    line = _fail([*args, "--source-checkpoint", str(right), "--hidden", "32"], capsys)
    assert "--hidden asks for 32; leave --hidden out (the checkpoint's is 8)" in line
    bare = root / "bare.safetensors"
    pacnet.save_network(bare, MLP(3, (8,), 1))
    assert "names no model spec" in _fail([*args, "--source-checkpoint", str(bare)], capsys)
    assert not (root / "o").exists()


def test_a_transfer_folder_is_a_source_checkpoint(good, capsys):
    """Inputs, outputs, architecture and scaling all come from the checkpoint."""
    root, source, target, _ = good
    first = root / "first"
    assert main([*_transfer(source, target, first, "--inputs", "x1,x2,x3"), "--lam", "0.01",
                 "--ratio", "0.5"]) == 0  # fmt: skip
    args = ["transfer", "--source", str(source), "--target", str(target), "--out",
            str(root / "second"), "--source-steps", "50", "--target-steps", "30",
            "--source-checkpoint", str(first), "--lam", "0.01", "--ratio", "0.5"]  # fmt: skip
    assert main(args) == 0
    card = json.loads((root / "second" / "card.json").read_text())
    before = json.loads((first / "card.json").read_text())
    assert card["training"]["source"]["checkpoint"].endswith("net.safetensors")
    assert card["model"] == before["model"] and card["scaling"] == before["scaling"]
    assert card["inputs"] == ["x1", "x2", "x3"] and card["outputs"] == ["y"]


def test_wide_multi_output_table_with_constants_and_8_target_rows(tmp_path):
    """Many inputs, integer and constant columns, two outputs, unused columns, Windows line
    endings, quoted headers with a BOM, and a target table of 8 rows."""
    rng = np.random.default_rng(3)
    n_in = 24
    xs = rng.normal(size=(300, n_in))
    xs[:, 5] = 7.0  # constant in the source
    xs[:, 6] = rng.integers(0, 5, 300)  # an integer column
    xt = rng.normal(size=(8, n_in))
    xt[:, 5] = 7.0
    xt[:, 6] = rng.integers(0, 5, 8)

    def outputs(x, shift):
        return {"power [kW]": x[:, :3].sum(1) * 100 + shift, "eff": np.tanh(x[:, 3]) + 0.01}

    def table(path, x, shift, bom):
        columns = {f"in {j}": x[:, j] for j in range(n_in)}
        columns |= {"note": ["a"] * len(x), **outputs(x, shift), "const out": [1.0] * len(x)}
        with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\r\n", quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values(), strict=True))
        return path

    source = table(tmp_path / "s.csv", xs, 0.0, True)
    target = table(tmp_path / "t.csv", xt, 50.0, False)
    options = pipeline.TransferOptions(
        source, target, outputs=["power [kW]", "eff", "const out"], ignore=["note"],
        config=pipeline.TableConfig(source_steps=100, target_steps=20, hidden=(16,)),
        folds=4, lam=0.01, ratio=0.8,
    )  # fmt: skip
    outcome = pipeline.transfer(options)
    card = outcome.card
    assert card["inputs"] == [f"in {j}" for j in range(n_in)]
    assert card["metric"] == "rmse (standardised)"
    assert card["scaling"]["inputs"]["constant"] == ["in 5"]
    assert card["scaling"]["outputs"]["constant"] == ["const out"]
    assert set(card["metrics"]["source"]["after"]) >= {"rmse[power [kW]]", "mae[eff]"}
    assert all(np.isfinite(v) for v in card["metrics"]["target"]["in_sample"].values())
    write_artifact(outcome, tmp_path / "m")
    artifact = open_artifact(tmp_path / "m")
    predicted = artifact.predict_table(read_table(target), "target")
    assert list(predicted) == ["power [kW]", "eff", "const out"]
    assert all(np.isfinite(v).all() for v in predicted.values())
    assert "Per output, in its own units" in (tmp_path / "m" / "report.md").read_text()


def test_a_failure_while_writing_leaves_the_folder_as_it_was(good, monkeypatch, capsys):
    root, source, target, _ = good
    out = root / "m"
    args = [*_transfer(source, target, out, "--inputs", "x1,x2,x3"), "--lam", "0.01",
            "--ratio", "0.8"]  # fmt: skip
    import pacnet.tabular.report as report

    def broken(card, where):
        (where / "report.md").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", broken)
    assert "No space left on device" in _fail(args, capsys)
    assert not out.exists() and not list(root.glob(".m.*"))  # no folder, no staging left
    monkeypatch.undo()
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(report, "write_report", broken)
    _fail([*args[:-4], "--lam", "0.1", "--ratio", "0.5"], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, whole
    assert not list(root.glob(".m.*"))


def test_transfer_from_a_source_checkpoint_alone_then_predict(tmp_path):
    """No source table: Allocate distils the checkpoint on inputs drawn from its stored
    statistics and the target's inputs; the card says so; the source task answers exactly
    as the source model after that Allocate, and no source file is needed anywhere."""
    source, target, new, _ = tables(tmp_path)
    first = tmp_path / "first"
    assert main(["transfer", "--source", str(source), "--target", str(target), "--outputs",
                 "y", "--out", str(first), *TINY]) == 0  # fmt: skip
    source.unlink()  # the source data are gone; the model stays
    out = tmp_path / "second"
    assert main(["transfer", "--source-checkpoint", str(first), "--target", str(target),
                 "--out", str(out), "--target-steps", "60"]) == 0  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    seen = card["data"]["source"]
    assert seen["file"] is None and seen["allocate_on"] == "generated+target-inputs"
    assert seen["generated_rows"] == pipeline.GENERATED_ROWS and seen["target_input_rows"] == 12
    assert card["training"]["source"]["checkpoint"] == str(first / "net.safetensors")
    assert "generated inputs" in (out / "report.md").read_text()
    for task in ("source", "target"):
        pred = tmp_path / f"{task}.csv"
        assert main(["predict", str(out), "--task", task, "--input", str(new), "--out",
                     str(pred)]) == 0  # fmt: skip
        assert np.isfinite(read_column(pred, "y")).all()
    # the source task is the checkpoint's model after Allocate: close to the checkpoint
    before = read_column(tmp_path / "source.csv", "y")
    first_pred = tmp_path / "first.csv"
    assert main(["predict", str(first), "--task", "source", "--input", str(new), "--out",
                 str(first_pred)]) == 0  # fmt: skip
    gap = np.sqrt(np.mean((before - read_column(first_pred, "y")) ** 2))
    assert gap < 0.5 * np.std(read_column(first_pred, "y")), gap


def test_a_checkpoint_without_statistics_needs_the_source_table(tmp_path, capsys):
    _, target, _, _ = tables(tmp_path)
    net = MLP(3, (8,), 1)
    path = tmp_path / "net.safetensors"
    pacnet.save_network(path, net, extra={"model": net.spec()})
    assert main(["transfer", "--source-checkpoint", str(path), "--target", str(target),
                 "--inputs", "x1,x2,x3", "--outputs", "y", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "holds no input statistics" in capsys.readouterr().err
    assert main(["transfer", "--target", str(target), "--outputs", "y", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--source is required" in capsys.readouterr().err


def shifted_tables(root):
    """A target that is the source plus a large offset: fine-tuning wins on such rows."""
    rng = np.random.default_rng(3)
    xs, xt, xn = (
        rng.uniform(-1, 1, (400, 3)),
        rng.uniform(-1, 1, (30, 3)),
        rng.uniform(-1, 1, (20, 3)),
    )
    names = ["x1", "x2", "x3"]
    source = write_csv(root / "s.csv", {**dict(zip(names, xs.T, strict=True)), "y": smooth(xs, 0)})
    target = write_csv(
        root / "t.csv", {**dict(zip(names, xt.T, strict=True)), "y": 3 * smooth(xt, 0) + 2}
    )
    new = write_csv(root / "n.csv", dict(zip(names, xn.T, strict=True)))
    return source, target, new, xn


def test_the_best_method_is_kept_and_both_tasks_answer(tmp_path, monkeypatch):
    source, target, new, xn = shifted_tables(tmp_path)
    outcomes = []
    real = pipeline.transfer
    monkeypatch.setattr(pipeline, "transfer", lambda o: outcomes.append(real(o)) or outcomes[-1])
    out = tmp_path / "best"
    assert main(["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
                 "--out", str(out), "--method", "best", "--compare", "finetune,l2sp,lora",
                 *TINY]) == 0  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    best = min(card["methods"], key=lambda m: m["cv"])
    assert card["method"] == best["method"] and "lowest cross-validated" in card["method_chosen"]
    outcome = outcomes[0]
    x = outcome.problem.x_scale.apply(xn)
    for task, model in (("source", outcome.source_model), ("target", outcome.model)):
        pred = tmp_path / f"{task}.csv"
        assert main(["predict", str(out), "--task", task, "--input", str(new), "--out",
                     str(pred)]) == 0  # fmt: skip
        with torch.no_grad():
            want = outcome.problem.y_scale.invert(model.eval()(x))[:, 0]
        np.testing.assert_array_equal(read_column(pred, "y"), want)
    if card["method"] != "pacnet":  # two networks: the source as it was, bit for bit
        src = card["metrics"]["source"]
        assert src["after"] == src["before"]  # the folder answers with the untouched source
        assert (out / "source.safetensors").is_file() and card["format_version"] == 2
        spec = MLP.from_spec(card["model"])
        source_model = pacnet.load(out / "source.safetensors", spec, task="source")
        with torch.no_grad():
            before = outcome.problem.y_scale.invert(source_model.eval()(x))[:, 0]
        np.testing.assert_array_equal(read_column(tmp_path / "source.csv", "y"), before)
    assert card["method"] in (out / "report.md").read_text()


def test_a_named_baseline_is_kept_as_asked(tmp_path, capsys):
    source, target, _, _ = shifted_tables(tmp_path)
    out = tmp_path / "ft"
    assert main(["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
                 "--out", str(out), "--method", "finetune", *TINY]) == 0  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["method"] == "finetune" and card["method_chosen"] == "asked for (--method finetune)"
    assert [m["method"] for m in card["methods"]] == ["pacnet", "finetune"]
    assert "kept: finetune" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "kept: finetune" in capsys.readouterr().out
    assert main(["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
                 "--out", str(out), "--method", "magic"]) == 2  # fmt: skip
    assert "magic" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pred.xlsx", "pred.json", "pred"])
def test_predict_refuses_an_output_name_it_does_not_write(tmp_path, capsys, name):
    table = tmp_path / "in.csv"
    table.write_text("x\n1\n")
    out = tmp_path / name
    argv = ["predict", str(tmp_path / "model"), "--input", str(table), "--out", str(out)]
    line = error_of(argv, capsys)
    assert str(out) in line and ".csv" in line and ".parquet" in line
    assert not out.exists()


def test_predict_into_a_folder_names_the_folder(tmp_path, capsys):
    table = tmp_path / "in.csv"
    table.write_text("x\n1\n")
    folder = tmp_path / "preds"
    folder.mkdir()
    argv = ["predict", str(tmp_path / "model"), "--input", str(table), "--out", str(folder)]
    line = error_of(argv, capsys)
    assert f"{folder}: is a directory" in line and ".tmp" not in line


def test_transfer_says_a_binary_target_is_not_a_text_table(tmp_path, capsys):
    binary = tmp_path / "measured.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    argv = ["transfer", "--source", str(binary), "--target", str(binary), "--outputs", "y"]
    line = error_of([*argv, "--out", str(tmp_path / "o")], capsys)
    assert "not a text table" in line and not (tmp_path / "o").exists()
