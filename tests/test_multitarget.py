"""Several targets in one network: ownership, bit-exact earlier tasks, checkpoints, errors."""

import pytest
import torch
from conftest import mlp, small_cnn
from torch import nn

import pacnet
from pacnet import Data, FitConfig, PacnetError, allocate, calibrate, prune
from pacnet.core.tasks import FREE

FIT = FitConfig(steps=30, batch_size=16, lr=1e-2)
MSE = nn.functional.mse_loss


def mlp_data(seed, n=48):
    g = torch.Generator().manual_seed(seed)
    return Data(torch.randn(n, 5, generator=g), torch.randn(n, 1, generator=g))


def cnn_data(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    return Data(torch.randn(n, 1, 6, 6, generator=g), torch.randn(n, 3, generator=g))


CASES = {"mlp": (mlp, mlp_data), "cnn_bn": (small_cnn, cnn_data)}


def outputs(model, tasks, task, x):
    with tasks.use(model, task):
        model.eval()
        out = model(x).detach().clone()
        model.train()
        return out


def chain(make, data, names=("A", "B", "C")):
    """Source + len(names) targets with equal shares; outputs of each task when it is done."""
    model = make()
    source = data(0)
    pacnet.fit(model, MSE, source, FIT)
    mask = prune(model, 0.8)
    allocate(model, mask, source, MSE, FIT)
    probe = data(99).x
    tasks = pacnet.Tasks(model, mask)
    reference = {"source": outputs(model, tasks, "source", probe)}
    for i, name in enumerate(names):
        reserve = 1 - 1 / (len(names) - i)
        tasks, _ = calibrate(
            model, mask, data(i + 1), MSE, FIT, tasks=tasks, task=name, reserve=reserve
        )
        reference[name] = outputs(model, tasks, name, probe)
    return model, mask, tasks, probe, reference


@pytest.mark.parametrize("case", list(CASES))
def test_three_targets_in_sequence_leave_every_earlier_task_bit_identical(case):
    make, data = CASES[case]
    model, _, tasks, probe, reference = chain(make, data)
    assert tasks.order == ["source", "A", "B", "C"]
    for task, expected in reference.items():
        assert torch.equal(outputs(model, tasks, task, probe), expected), task
    distinct = [reference[t] for t in ("A", "B", "C")]
    assert not torch.equal(distinct[0], distinct[1]) and not torch.equal(distinct[1], distinct[2])


def test_ownership_counts_are_exact_equal_shares():
    _, mask, tasks, _, _ = chain(mlp, mlp_data)
    owner = tasks.owners()
    counts = {k: sum(int((o == k).sum()) for o in owner.values()) for k in range(4)}
    assert counts[0] == mask.essential
    assert sum(int((o == FREE).sum()) for o in owner.values()) == 0
    redundant = mask.redundant
    first = redundant - round(2 / 3 * redundant)  # A keeps a third of what it trained
    second = (redundant - first) - round(1 / 2 * (redundant - first))
    assert (counts[1], counts[2], counts[3]) == (first, second, redundant - first - second)
    for name, o in owner.items():  # the source owns exactly its essential entries
        assert torch.equal(o == 0, mask[name])


def test_a_task_sees_earlier_tasks_and_not_later_ones():
    model, _, tasks, _, _ = chain(mlp, mlp_data)
    params = dict(model.named_parameters())
    full = {n: p.detach().clone() for n, p in params.items()}
    owner = tasks.owners()
    for index, task in enumerate(tasks.order):
        with tasks.use(model, task):
            for name, o in owner.items():
                w = params[name].detach()
                assert torch.count_nonzero(w[o > index]) == 0, (task, name)
                assert torch.equal(w[o <= index], full[name][o <= index]), (task, name)
    assert all(torch.equal(p, full[n]) for n, p in params.items())


def test_checkpoint_round_trip_keeps_every_task(tmp_path):
    model, _, tasks, probe, reference = chain(small_cnn, cnn_data)
    path = tmp_path / "multi.safetensors"
    pacnet.save(path, model, tasks)
    info = pacnet.core.checkpoint.inspect(path)
    assert info["tasks"] == ["source", "A", "B", "C"]
    assert info["owned"] == {
        t: sum(int((o == k).sum()) for o in tasks.owners().values())
        for k, t in enumerate(tasks.order)
    }
    for task, expected in reference.items():
        fresh = pacnet.load(path, small_cnn(seed=5), task=task)
        fresh.eval()
        assert torch.equal(fresh(probe), expected), task
    loaded = pacnet.load_tasks(path, small_cnn(seed=5))
    assert all(torch.equal(loaded.owners()[n], o) for n, o in tasks.owners().items())


def test_second_target_needs_room_and_earlier_tasks_cannot_train():
    model = mlp()
    mask = prune(model, 0.8)
    tasks, _ = calibrate(model, mask, mlp_data(1), MSE, FIT)
    with pytest.raises(PacnetError, match="no free weights"):
        calibrate(model, mask, mlp_data(2), MSE, FIT, tasks=tasks, task="B")
    assert tasks.order == ["source", "target"]  # nothing half-added
    with pytest.raises(PacnetError, match="cannot be released"):
        tasks.release(model, "source", 0.5)
    with pytest.raises(PacnetError, match="reserve"):
        calibrate(model, mask, mlp_data(2), MSE, FIT, tasks=tasks, task="B", reserve=1.0)
    model2 = mlp()
    mask2 = prune(model2, 0.8)
    tasks2, _ = calibrate(model2, mask2, mlp_data(1), MSE, FIT, task="A", reserve=0.5)
    tasks2, _ = calibrate(model2, mask2, mlp_data(2), MSE, FIT, tasks=tasks2, task="B")
    tasks2.activate(model2, "A")
    with pytest.raises(PacnetError, match="final"):
        tasks2.trainable(model2)


def test_each_target_trains_exactly_the_entries_that_were_free():
    model = mlp()
    mask = prune(model, 0.8)
    tasks, _ = calibrate(model, mask, mlp_data(1), MSE, FIT, task="A", reserve=0.5)
    free = {n: (o == FREE).clone() for n, o in tasks.owners().items()}
    assert sum(int(f.sum()) for f in free.values()) == round(0.5 * mask.redundant)
    tasks.add("B")
    tasks.activate(model, "B")
    trainable = tasks.trainable(model)
    for name, f in free.items():
        assert torch.equal(trainable[name], f), name
    for name in tasks.names:  # and all of its own tensors
        assert bool(trainable[name].all()), name


@pytest.mark.parametrize(
    "cfg",
    [
        FitConfig(steps=20, batch_size=16, lr=1e-2, optimizer="sgd", weight_decay=1e-2),
        FitConfig(steps=20, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.1),
    ],
    ids=["sgd_momentum_decay", "adamw_decay"],
)
def test_earlier_tasks_stay_exact_under_weight_decay_and_momentum(cfg):
    """Optimizers that move zero-gradient entries (decay, momentum) take the write-back path
    in every calibration and retraining of the chain; earlier tasks still do not move."""
    model = small_cnn()
    source = cnn_data(0)
    mask = prune(model, 0.8)
    allocate(model, mask, source, MSE, cfg)
    probe = cnn_data(99).x
    tasks = pacnet.Tasks(model, mask)
    reference = {"source": outputs(model, tasks, "source", probe)}
    for i, name in enumerate(("A", "B", "C")):
        tasks, _ = calibrate(
            model, mask, cnn_data(i + 1), MSE, cfg, tasks=tasks, task=name, reserve=1 - 1 / (3 - i)
        )
        reference[name] = outputs(model, tasks, name, probe)
        for task, expected in reference.items():
            assert torch.equal(outputs(model, tasks, task, probe), expected), (name, task)


def test_a_chain_continues_after_a_checkpoint_round_trip(tmp_path):
    """Save after the first target gave room back, load into a fresh model, add a second."""
    model = small_cnn()
    mask = prune(model, 0.8)
    allocate(model, mask, cnn_data(0), MSE, FIT)
    probe = cnn_data(99).x
    tasks, _ = calibrate(model, mask, cnn_data(1), MSE, FIT, task="A", reserve=0.5)
    reference = {t: outputs(model, tasks, t, probe) for t in ("source", "A")}
    path = tmp_path / "half.safetensors"
    pacnet.save(path, model, tasks)
    fresh = small_cnn(seed=3)
    loaded = pacnet.load_tasks(path, fresh)
    free_before = sum(int((o == FREE).sum()) for o in loaded.owners().values())
    assert free_before == round(0.5 * mask.redundant)
    loaded, _ = calibrate(fresh, loaded.mask, cnn_data(2), MSE, FIT, tasks=loaded, task="B")
    assert loaded.order == ["source", "A", "B"]
    assert sum(int((o == 2).sum()) for o in loaded.owners().values()) == free_before
    for task, expected in reference.items():
        assert torch.equal(outputs(fresh, loaded, task, probe), expected), task
    assert not torch.equal(outputs(fresh, loaded, "B", probe), reference["A"])


def test_every_target_can_have_a_fresh_head_of_another_size():
    model = mlp(out=1)
    mask = prune(model, 0.8)
    allocate(model, mask, mlp_data(0), MSE, FIT)
    probe = mlp_data(99).x
    tasks = pacnet.Tasks(model, mask)
    reference = {"source": outputs(model, tasks, "source", probe)}
    for i, (name, width) in enumerate((("A", 2), ("B", 3))):
        g = torch.Generator().manual_seed(i)
        head = {"4.weight": torch.randn(width, 16, generator=g), "4.bias": torch.zeros(width)}
        data = Data(mlp_data(i + 1).x, torch.randn(48, width, generator=g))
        tasks, _ = calibrate(
            model, mask, data, MSE, FIT, tasks=tasks, task=name, init=head, reserve=0.5 * (i == 0)
        )
        reference[name] = outputs(model, tasks, name, probe)
    assert [reference[t].shape[1] for t in ("source", "A", "B")] == [1, 2, 3]
    for task, expected in reference.items():
        assert torch.equal(outputs(model, tasks, task, probe), expected), task


def test_one_target_checkpoints_keep_one_bit_per_weight_and_read_as_version_1(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = mlp()
    mask = prune(model, 0.8)
    tasks, _ = calibrate(model, mask, mlp_data(1), MSE, FIT)
    path = tmp_path / "one.safetensors"
    pacnet.save(path, model, tasks)
    stored = load_file(str(path))
    assert not [k for k in stored if k.startswith("owner/")]  # the mask says it all
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "1"  # what pacnet wrote before several targets existed
    old = tmp_path / "v1.safetensors"
    save_file(stored, old, metadata=meta)
    x = mlp_data(99).x
    for task in ("source", "target"):
        with torch.no_grad():
            expected = outputs(model, tasks, task, x)
            assert torch.equal(pacnet.load(old, mlp(seed=4), task=task)(x), expected), task
    assert pacnet.core.checkpoint.inspect(old)["owned"] == {
        "source": mask.essential,
        "target": mask.redundant,
    }


def test_pacnet_inspect_prints_what_each_task_owns(tmp_path, capsys):
    from pacnet.cli import main

    model, mask, tasks, _, _ = chain(mlp, mlp_data)
    path = tmp_path / "multi.safetensors"
    pacnet.save(path, model, tasks)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tasks source, A, B, C" in out
    owned = pacnet.core.checkpoint.inspect(path)["owned"]
    assert owned["source"] == mask.essential
    assert sum(owned[t] for t in "ABC") == mask.redundant
    for task in ("source", "A", "B", "C"):
        assert f"  {task}: " in out and f"owns {owned[task]:,} masked weights" in out
