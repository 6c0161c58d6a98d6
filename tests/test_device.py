"""Every tensor a model sees comes through pacnet's one data path (``batches.to_device``),
so on a GPU no batch is left on the CPU. Without a GPU the test marks what that path
places (a tensor subclass) and a forward pre-hook on every module records any input that
did not come through it: data left on the CPU by a benchmark's metrics, a method's own
pass or a prediction would show up here as it would as a device error on CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_FLAGS
from test_images import TINY_IMAGES, make_celeba
from test_tabular import tables
from test_trajectory import SMALL

from pacnet import PacnetError
from pacnet.cli import main
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS
from pacnet.training import batches
from pacnet.training.cache import StateCache
from pacnet.training.device import check_device


class Placed(torch.Tensor):
    """A tensor that ``batches.place`` put where the run computes."""


@pytest.fixture
def strays(monkeypatch):
    """Names of the modules that got an input that did not come through ``to_device``."""
    real = batches.place
    monkeypatch.setattr(batches, "place", lambda t, device: real(t, device).as_subclass(Placed))
    found: list[str] = []

    def look(module: torch.nn.Module, args: tuple) -> None:
        for value in args:
            if isinstance(value, torch.Tensor) and not isinstance(value, Placed):
                found.append(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(look)
    try:
        yield found
    finally:
        handle.remove()


def test_the_audit_sees_a_batch_left_behind(strays):
    model = torch.nn.Linear(3, 1)
    model(batches.to_device(torch.ones(2, 3), torch.device("cpu")))
    assert strays == []
    model(torch.ones(2, 3))  # as a metric that forgot to move its data would
    assert strays == ["Linear"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_feeds_the_model_through_the_data_path(method, strays, tmp_path):
    spec = RunSpec("pde", method, target_size=3, bench_settings=SMALL["pde"], select="holdout")
    run(spec, tmp_path / "out", StateCache(tmp_path / "cache"))
    assert strays == []


def test_images_delta_and_several_targets_feed_the_model_through_the_data_path(strays, tmp_path):
    root = make_celeba(tmp_path / "celeba")
    settings = {**TINY_IMAGES, "data_dir": str(root)}
    cache = StateCache(tmp_path / "cache")
    for method in ("delta", "bss", "pacnet"):
        run(RunSpec("celeba", method, target_size=8, bench_settings=settings), None, cache)
    chain = RunSpec("friedman", "pacnet", target_size=10, quick=True, targets=(1, 2))
    run(chain, None, cache)
    assert strays == []


def test_transfer_and_predict_feed_the_model_through_the_data_path(strays, tmp_path, capsys):
    source, target, new, _ = tables(tmp_path, source_rows=200)
    tiny = ["--source-steps", "60", "--target-steps", "20", "--hidden", "8"]
    out = tmp_path / "folder"
    argv = ["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
            "--out", str(out), "--compare", "l2sp", *tiny]  # fmt: skip
    assert main(argv) == 0
    assert main(["predict", str(out), "--input", str(new), "--device", "cpu"]) == 0
    assert strays == []


def test_devices_this_machine_lacks_are_one_line(monkeypatch, capsys):
    run_flags = ["run", "friedman", "--method", "pacnet", "--quick", *TINY_FLAGS]
    if not torch.cuda.is_available():
        assert main([*run_flags, "--device", "cuda"]) == 2
        assert "CUDA is not available on this machine" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PacnetError, match=r"has 1 CUDA device \(cuda:0 to cuda:0\)"):
        check_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an old GPU")
    with pytest.raises(PacnetError, match="an old GPU does not compute in bfloat16"):
        check_device("cuda", amp="bf16")
    assert check_device("cuda:0", amp="fp16") == torch.device("cuda:0")
    assert main([*run_flags, "--device", "cuda:3"]) == 2
    assert "cuda:3" in capsys.readouterr().err
    with pytest.raises(PacnetError, match="unknown device 'gpu'"):
        check_device("gpu")
