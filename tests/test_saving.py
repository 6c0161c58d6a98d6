"""``pacnet run --save`` keeps the trained network next to result.json: inspect reads it,
``pacnet.load`` restores it bit for bit, and ``pacnet report`` says where it is."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_FLAGS

import pacnet
from pacnet.benchmarks import get_benchmark
from pacnet.cli import main
from pacnet.config import make
from pacnet.experiments.run import runner


def _spy(monkeypatch) -> list:
    """Keep what ``pacnet run`` trained (the network behind its result.json), on either
    engine: both end a run with :func:`runner.finish`."""
    kept = []
    real = runner.finish

    def keep(*args, **kwargs):
        kept.append(real(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(runner, "finish", keep)
    return kept


def _fresh_model(result: dict) -> torch.nn.Module:
    bench = get_benchmark(result["benchmark"])
    return bench(make(bench.Config, result["config"]["benchmark"])).make_model(seed=123)


def _probe(result: dict) -> torch.Tensor:
    return torch.rand(64, 10, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("engine", ["batched", "sequential"])
def test_run_pacnet_quick_save_restores_bit_for_bit(tmp_path, monkeypatch, capsys, engine):
    kept = _spy(monkeypatch)
    out = tmp_path / "run"
    argv = ["run", "friedman", "--method", "pacnet", "--quick", "--save", "--out", str(out),
            "--engine", engine]  # fmt: skip
    assert main(argv) == 0
    assert len(kept) == 1
    assert f"network (source, target) saved to {out / 'net.safetensors'}" in capsys.readouterr().out
    trained = kept[0]
    result = json.loads((out / "result.json").read_text())
    assert result["network"]["file"] == "net.safetensors"
    assert result["engine"] == engine
    assert result["network"]["tasks"] == ["source", "target"]

    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "checksum ok; tasks source, target" in shown
    assert "model: MLP 10 -> 128,128 -> 1 (relu)" in shown
    assert "saved by pacnet run: pacnet on friedman (seed 0, N=50)" in shown

    x = _probe(result)
    model, tasks = trained.model.eval(), trained.tasks
    loaded_tasks = pacnet.load_tasks(out / "net.safetensors", loaded := _fresh_model(result))
    loaded.eval()
    for task in ("source", "target"):
        with torch.no_grad(), tasks.use(model, task), loaded_tasks.use(loaded, task):
            assert torch.equal(model(x), loaded(x))
            state, restored = model.state_dict(), loaded.state_dict()
            assert state.keys() == restored.keys()
            assert all(torch.equal(state[k], restored[k]) for k in state)
        one = pacnet.load(out / "net.safetensors", _fresh_model(result), task=task).eval()
        with torch.no_grad(), tasks.use(model, task):
            assert torch.equal(one(x), model(x))
    # the target error in result.json is that of the saved target network
    bench = get_benchmark("friedman")(make(get_benchmark("friedman").Config,
                                           result["config"]["benchmark"]))  # fmt: skip
    target = bench.target(result["seed"], result["target_size"])
    one = pacnet.load(out / "net.safetensors", _fresh_model(result), task="target")
    assert bench.score(one, target.test) == result["target_test"]


def test_several_targets_save_the_whole_network(tmp_path, monkeypatch, capsys):
    kept = _spy(monkeypatch)
    out = tmp_path / "chain"
    argv = ["run", "friedman", "--method", "pacnet", "--targets", "1,2,3", "--save", "--quick",
            "--target-size", "20", "--out", str(out), *TINY_FLAGS]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["network"]["tasks"] == ["source", "1", "2", "3"]
    trained, x = kept[0], _probe(result)
    for task in result["network"]["tasks"]:
        one = pacnet.load(out / "net.safetensors", _fresh_model(result), task=task).eval()
        with torch.no_grad(), trained.tasks.use(trained.model.eval(), task):
            assert torch.equal(one(x), trained.model(x))


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_one_network_methods_save_their_target_network(tmp_path, monkeypatch, capsys, method):
    if method == "lora":
        pytest.importorskip("peft")
    kept = _spy(monkeypatch)
    out = tmp_path / method
    argv = ["run", "friedman", "--method", method, "--save", "--quick", "--target-size", "20",
            "--out", str(out), *TINY_FLAGS]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["network"]["format"] == "pacnet.network"
    assert result["network"]["tasks"] == ["target"]
    capsys.readouterr()
    assert main(["inspect", str(out / "net.safetensors")]) == 0
    assert "one network, for task target" in capsys.readouterr().out
    x, trained = _probe(result), kept[0]
    one = pacnet.load(out / "net.safetensors", _fresh_model(result)).eval()
    with torch.no_grad():
        expected = trained.model.eval()(x)
        if method == "finetune":
            assert torch.equal(one(x), expected)
        else:  # LoRA's adapters merged into the weights: equal up to rounding
            torch.testing.assert_close(one(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(pacnet.PacnetError, match="holds one network, for task 'target'"):
        pacnet.load(out / "net.safetensors", _fresh_model(result), task="source")
    with pytest.raises(pacnet.PacnetError, match="one plain network"):
        pacnet.load_tasks(out / "net.safetensors", _fresh_model(result))


def test_report_says_where_each_saved_network_is(tmp_path, capsys):
    for method in ("pacnet", "finetune"):
        argv = ["run", "friedman", "--method", method, "--quick", "--target-size", "20",
                "--out", str(tmp_path / "runs" / method), *TINY_FLAGS]  # fmt: skip
        assert main([*argv, "--save"] if method == "pacnet" else argv) == 0
    assert main(["report", "--results", str(tmp_path / "runs"), "--out",
                 str(tmp_path / "report")]) == 0  # fmt: skip
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Saved networks" in text
    saved = tmp_path / "runs" / "pacnet" / "net.safetensors"
    assert f"| friedman | pacnet | 0 | 20 | source, target | `{saved}` |" in text
    assert "runs/finetune/net.safetensors" not in text


def test_saved_networks_carry_their_model_spec(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "friedman", "--method", "finetune", "--save", "--quick", "--target-size",
            "20", "--out", str(out), *TINY_FLAGS]  # fmt: skip
    assert main(argv) == 0
    meta = pacnet.core.checkpoint.inspect(out / "net.safetensors")["extra"]
    assert meta["model"] == {"kind": "mlp", "in_features": 10, "hidden": [16, 16],
                             "out_features": 1, "activation": "relu"}  # fmt: skip
    assert meta["method"] == "finetune" and meta["run_id"]
