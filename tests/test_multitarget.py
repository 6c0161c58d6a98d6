"""Several targets in one network: ownership, bit-exact earlier tasks, checkpoints, errors."""

import pytest
import torch
from conftest import mlp, small_cnn
from torch import nn

import pacnet
from pacnet import Data, FitConfig, PacnetError, allocate, calibrate, prune
from pacnet.tasks import FREE

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
    info = pacnet.checkpoint.inspect(path)
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
