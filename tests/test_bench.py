"""`pacnet bench` measures what it says: the masked modes run pacnet's own masking paths,
every model and mode (peers included) runs in its precision and memory format, and the
report pairs each mode with plain."""

import pytest
import torch

from pacnet.cli import main
from pacnet.experiments.bench.costs import run_all, step_times, summary
from pacnet.experiments.bench.models import GPU_MODELS, MODELS, placed
from pacnet.experiments.bench.modes import MODES, Unavailable, stepper


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("model_name", ["friedman_mlp", "resnet18"])
def test_bench_modes_run_the_masking_path_the_optimizer_gets(optimizer, model_name):
    model, x, y = placed(model_name, "cpu", tiny=True)
    step, context = stepper("calibrate", model_name, model, x, y, optimizer)
    with context() as session:
        for _ in range(2):
            step()
        assert session.l2 > 0 and not session.restores
        assert bool(session.parked) == (optimizer != "sgd")  # SGD zeroes gradients instead
        # fused Adam's weight decay carries the whole λ term (own tensors: −α·w₀ first)
        assert session.folding.on == (optimizer == "adam")
        assert bool(session.folding.offsets) == (optimizer == "adam")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_every_model_in_its_precision(name, mode):
    """Each mode moves the weights it trains and only those; a bf16 model's forward runs in
    bf16; a channels_last model keeps its layout."""
    torch.manual_seed(0)
    model, x, y = placed(name, "cpu", tiny=True)
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        step, context = stepper(mode, name, model, x, y, "adam")
    except Unavailable as why:
        pytest.fail(f"{mode} on {name} unavailable on the CPU: {why}")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with context():
        step()
        step()
    assert seen and seen[-1] == (MODELS[name].amp or torch.float32)
    moved = [
        n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])
    ]
    assert moved, f"{mode} trained nothing"
    if MODELS[name].channels_last:
        conv = next(p for p in model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)


def test_the_gpu_models_are_the_sizes_the_report_names():
    sizes = {}
    for name in GPU_MODELS:
        with torch.device("meta"):
            model = MODELS[name].build(False)[0]
        sizes[name] = sum(p.numel() for p in model.parameters())
    assert sizes["gpt2_small"] == 124_439_808  # GPT-2 small, head tied to the embedding
    assert sizes["resnet50"] == 25_557_032  # torchvision's resnet50
    assert sizes["wide_mlp"] > 10_000_000


def test_step_times_reports_paired_ratios_for_every_mode():
    report = step_times("friedman_mlp", repeats=3, steps=2, optimizer="sgd", modes=MODES)
    assert set(report["seconds_per_step"]) | set(report["unavailable"]) == set(MODES)
    for mode in report["over_plain"]:
        low, high = report["ratio_quartiles"][mode]
        assert 0 < low <= high
    assert report["allocate_over_plain"] == report["over_plain"]["allocate"]


def test_a_mode_that_cannot_run_is_named_with_why(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name.startswith("peft"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    report = run_all(quick=True, models=["wide_mlp"], modes=["plain", "lora"], tiny=True)
    assert "peft is not installed" in report["steps"]["wide_mlp"]["unavailable"]["lora"]
    assert "lora" not in report["steps"]["wide_mlp"]["over_plain"]
    assert "lora" in summary(report) and "not run" in summary(report)


def test_bench_profile_and_bad_input(capsys):
    assert main(["bench", "--profile", "friedman_mlp", "--quick", "--optimizer", "sgd"]) == 0
    out = capsys.readouterr().out
    assert "calibrate:" in out and "aten::" in out
    assert main(["bench", "--optimizer", "lion"]) != 0
    assert "unknown optimizer 'lion'" in capsys.readouterr().err
    assert main(["bench", "--models", "gpt3"]) == 2
    assert "unknown model 'gpt3'" in capsys.readouterr().err
    assert main(["bench", "--modes", "prune"]) == 2
    assert "unknown mode 'prune'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_bench_quick_leaves_resnet18_to_the_full_bench_on_the_cpu():
    from pacnet.experiments.bench.costs import default_models

    assert default_models("cpu", quick=True) == ["friedman_mlp", "wide_mlp"]
    assert "resnet18" in default_models("cpu")
    assert default_models("cuda", quick=True) == list(GPU_MODELS)  # a GPU times its own set


def test_engines_are_timed_method_by_method_side_by_side(tmp_path):
    """``pacnet bench --engines``: each method's runs on both engines, one after the other,
    with its speedup and the largest difference between the engines' records."""
    from test_batched import TINY

    from pacnet.experiments.bench import engines
    from pacnet.experiments.run.spec import RunSpec
    from pacnet.training.cache import StateCache
    from pacnet.training.stacked import TOLERANCE

    specs = [
        RunSpec("friedman", m, seed=s, target_size=12, bench_settings=TINY, select="cv")
        for m in ("delta", "lora")
        for s in (0, 1)
    ]
    report = engines.compare(specs, StateCache(tmp_path / "cache"))
    assert list(report["per_method"]) == ["delta", "lora"] and report["runs"] == 4
    for row in report["per_method"].values():
        assert row["runs"] == 2 and row["sequential_seconds"] > 0 and row["batched_seconds"] > 0
        assert row["max_relative_metric_difference"] <= TOLERANCE["metric_rtol"]
    assert report["engines_in_records"] == ["batched"] and report["cv_choices_differing"] == []
    text = engines.summary(report)
    assert all(f"    {m} " in text for m in ("delta", "lora"))
