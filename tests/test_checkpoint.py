"""Checkpoints (pacnet.core.checkpoint): both tasks round-trip exactly in one file, at about
half of two dense models; damaged, foreign and future files are refused in one line; tied
weights, earlier files and integer and frozen per-task parameters are kept."""

import json
from pathlib import Path

import pytest
import torch
from conftest import small_cnn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

import pacnet
from pacnet import Data, FitConfig, PacnetError, allocate, calibrate, prune

FIT = FitConfig(steps=20, batch_size=16, lr=1e-2)


@pytest.fixture
def trained(tmp_path):
    g = torch.Generator().manual_seed(0)
    source = Data(torch.randn(48, 1, 6, 6, generator=g), torch.randn(48, 3, generator=g))
    target = Data(torch.randn(16, 1, 6, 6, generator=g), torch.randn(16, 3, generator=g))
    model = small_cnn()
    mse = nn.functional.mse_loss
    mask = prune(model, 0.8)
    allocate(model, mask, source, mse, FIT)
    model.eval()
    source_out = model(source.x).detach()
    tasks, _ = calibrate(model, mask, target, mse, FIT)
    model.eval()
    target_out = model(source.x).detach()
    path = tmp_path / "net.safetensors"
    pacnet.save(path, model, tasks, extra={"note": "test"})
    return path, source.x, source_out, target_out, model, tasks


def test_roundtrip_is_exact_for_both_tasks(trained):
    path, x, source_out, target_out, _, _ = trained
    source_model = pacnet.load(path, small_cnn(seed=5), task="source").eval()
    target_model = pacnet.load(path, small_cnn(seed=6), task="target").eval()
    assert torch.equal(source_model(x), source_out)
    assert torch.equal(target_model(x), target_out)


def test_load_tasks_restores_the_multi_task_network(trained):
    path, x, source_out, target_out, _, _ = trained
    model = small_cnn(seed=7)
    tasks = pacnet.load_tasks(path, model)
    model.eval()
    assert tasks.order == ["source", "target"]
    assert torch.equal(model(x), target_out)
    with tasks.use(model, "source"):
        assert torch.equal(model(x), source_out)


def test_two_tasks_cost_about_half_of_two_dense_models(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    mask = prune(model, 0.8)
    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    path = tmp_path / "two.safetensors"
    pacnet.save(path, model, tasks)
    dense = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense)
    assert path.stat().st_size <= 0.55 * 2 * dense.stat().st_size


def test_truncated_file_gives_one_line_error(trained):
    path = trained[0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PacnetError, match="not a readable safetensors") as info:
        pacnet.load(path, small_cnn())
    assert "\n" not in str(info.value)


def test_flipped_byte_fails_the_checksum(trained):
    path = trained[0]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PacnetError, match="checksum"):
        pacnet.load(path, small_cnn())


def test_other_architecture_is_rejected(trained):
    with pytest.raises(PacnetError, match=r"architecture|shape"):
        pacnet.load(trained[0], nn.Sequential(nn.Linear(5, 3)))


def test_future_format_version_is_rejected(trained, tmp_path):
    path = trained[0]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(path)), newer, metadata=meta)
    with pytest.raises(PacnetError, match="newer"):
        pacnet.load(newer, small_cnn())


def test_unknown_task_and_foreign_file(trained, tmp_path):
    with pytest.raises(PacnetError, match="no task 'third'"):
        pacnet.load(trained[0], small_cnn(), task="third")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign, metadata={"x": json.dumps(1)})
    with pytest.raises(PacnetError, match="not a pacnet checkpoint"):
        pacnet.load(foreign, small_cnn())


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.embed.weight  # tied

    def forward(self, x):
        return self.out(torch.relu(self.mid(self.embed(x))))


def test_tied_weights_are_stored_once_and_load_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    mask = prune(model, 0.5, prunable=["mid.weight"], warn=False)
    tasks = pacnet.Tasks(model, mask, names=["out.bias"])
    tasks.add("target")
    path = tmp_path / "tied.safetensors"
    pacnet.save(path, model, tasks)
    assert "shared/out.weight" not in load_file(str(path))
    torch.manual_seed(1)
    fresh = pacnet.load(path, Tied(), task="target")
    assert fresh.out.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_saving_inside_use_is_refused(trained, tmp_path):
    model, tasks = trained[4], trained[5]
    with tasks.use(model, "source"), pytest.raises(PacnetError, match=r"inside tasks\.use"):
        pacnet.save(tmp_path / "x.safetensors", model, tasks)


def test_dtype_change_needs_tasks_to(trained):
    _, x, source_out, _, model, tasks = trained
    model.double()
    with pytest.raises(PacnetError, match=r"tasks\.to"), tasks.use(model, "source"):
        pass
    tasks.to(torch.float64)
    with tasks.use(model, "source"):
        assert torch.allclose(model(x.double()).float(), source_out, atol=1e-5)
    model.float()
    tasks.to(torch.float32)
    with tasks.use(model, "source"):
        assert torch.equal(model(x), source_out)


def test_a_library_error_keeps_its_text(tmp_path):
    """safetensors starts its messages with a newline; the reason must still show."""
    from pacnet.io import write_safetensors

    shared = torch.zeros(4)
    with pytest.raises(PacnetError) as err:
        write_safetensors(tmp_path / "t.safetensors", {"a": shared, "b": shared}, {})
    reason = str(err.value).split(": ", 1)[1]
    assert reason.strip() and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_model_tied_otherwise_than_the_checkpoint_is_refused(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    tasks = pacnet.Tasks(model, prune(model, 0.5, prunable=["mid.weight"], warn=False))
    path = tmp_path / "tied.safetensors"
    pacnet.save(path, model, tasks)
    untied = Tied()
    untied.out.weight = nn.Parameter(untied.embed.weight.detach().clone())
    with pytest.raises(PacnetError, match=r"ties 'out\.weight' to 'embed\.weight' but the model"):
        pacnet.load(path, untied)


def test_files_written_by_earlier_pacnet_still_load(tmp_path):
    """tests/data holds a checkpoint and a mask written by pacnet before plans existed
    (Sequential: Linear(3, 4), BatchNorm1d(4), ReLU, Linear(4, 2); source and target)."""
    data = Path(__file__).parent / "data"

    def build():
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))

    mask = pacnet.Mask.load(data / "old_mask.safetensors")
    assert mask.plan is None and list(mask) == ["0.weight"]
    model = build()
    tasks = pacnet.load_tasks(data / "old_checkpoint.safetensors", model)
    assert tasks.order == ["source", "target"] and tasks.mask == mask
    x = torch.randn(5, 3)
    model.eval()
    with tasks.use(model, "source"):
        assert not model[0].weight.detach()[~mask["0.weight"]].any()  # redundant read as 0
        source = model(x)
    target = model(x)
    assert not torch.equal(source, target)
    pacnet.save(tmp_path / "again.safetensors", model, tasks)  # and on through the new format
    again = pacnet.load(tmp_path / "again.safetensors", build(), task="source").eval()
    assert torch.equal(again(x), source)


def bits(t):
    """The tensor's bytes (so -0.0 and +0.0 differ, and NaNs compare)."""
    t = t.detach().contiguous()
    return t.view(-1).view(torch.uint8) if t.is_floating_point() else t


def test_files_written_before_the_redesign_load_bit_for_bit(tmp_path):
    """tests/data/before-redesign/ holds a mask, a network with a source and two targets
    (ownership map), one with one target, and a one-network file, all written by pacnet
    before its modules moved (make.py there); with the weights that pacnet loaded for each
    task (compared bit for bit) and the outputs each task gave then (compared to the last
    bits a CPU's kernels may round differently in)."""
    import importlib.util

    from pacnet.core.checkpoint import inspect

    folder = Path(__file__).parent / "data" / "before-redesign"
    spec = importlib.util.spec_from_file_location("make_before_redesign", folder / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    expected = load_file(folder / "expected.safetensors")
    weights = load_file(folder / "weights.safetensors")
    x = make.probe()

    def same_weights(model, key):
        state = model.state_dict()
        prefix = f"{key}/"
        assert {k for k in weights if k.startswith(prefix)} == {prefix + k for k in state}, key
        for k, v in state.items():
            assert torch.equal(bits(v), bits(weights[prefix + k])), (key, k)

    def same_output(out, key):
        torch.testing.assert_close(out, expected[key], rtol=1e-6, atol=1e-7)

    mask = pacnet.Mask.load(folder / "mask.safetensors")
    assert mask.plan is not None and list(mask) == ["embed.weight", "conv.weight", "mix.weight"]
    for name, tasks in [("tasks", ["source", "a", "b"]), ("one-target", ["source", "target"])]:
        model = make.Net()
        loaded = pacnet.load_tasks(folder / f"{name}.safetensors", model)
        assert loaded.order == tasks and loaded.mask == mask
        assert model.again.weight is model.mix.weight  # the tie is kept
        for task in tasks:
            alone = pacnet.load(folder / f"{name}.safetensors", make.Net(), task=task).eval()
            same_weights(alone, f"{name}/{task}")
            same_output(alone(x), f"{name}/{task}")
            with loaded.use(model, task):
                model.eval()
                same_weights(model, f"{name}/{task}")
                assert torch.equal(model(x), alone(x)), (name, task)
    network = pacnet.load(folder / "network.safetensors", make.Net()).eval()
    same_weights(network, "network/target")
    same_output(network(x), "network/target")
    info = inspect(folder / "tasks.safetensors")
    assert info["tasks"] == ["source", "a", "b"] and info["extra"] == {"made_by": "make.py"}


SHORT_FIT = FitConfig(steps=3, batch_size=4, lr=1e-2)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def xy(salt: int = 0) -> Data:
    gen = torch.Generator().manual_seed(salt)
    return Data(torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen))


class IntegerStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 2)
        self.step = nn.Parameter(torch.tensor([3, 4]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.hidden(x)))


def test_checkpoints_keep_integer_and_frozen_per_task_parameters(tmp_path):
    torch.manual_seed(0)
    model = IntegerStep()
    model.hidden.bias.requires_grad_(False)
    mask = prune(model, 0.5)
    tasks, _ = calibrate(model, mask, xy(1), mse, SHORT_FIT)
    pacnet.save(tmp_path / "net.safetensors", model, tasks)
    torch.manual_seed(0)
    fresh = IntegerStep()
    fresh.hidden.bias.requires_grad_(False)
    loaded = pacnet.load_tasks(tmp_path / "net.safetensors", fresh)
    for task in ("source", "target"):
        assert torch.equal(loaded.tensors[task]["step"], torch.tensor([3, 4]))
        assert not loaded.tensors[task]["hidden.bias"].requires_grad
        assert loaded.tensors[task]["fc.weight"].requires_grad
