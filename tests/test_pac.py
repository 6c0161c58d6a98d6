import copy

import pytest
import torch
from conftest import mlp, small_cnn
from torch import nn

import pacnet
from pacnet import Data, FitConfig, PacnetError, Tasks, allocate, calibrate, prune
from pacnet.core.pac import parameter_report

FIT = FitConfig(steps=40, batch_size=16, lr=1e-2)


def mlp_data(seed, n=64, out=1):
    g = torch.Generator().manual_seed(seed)
    return Data(torch.randn(n, 5, generator=g), torch.randn(n, out, generator=g))


def cnn_data(seed, n=48, out=3):
    g = torch.Generator().manual_seed(seed)
    return Data(torch.randn(n, 1, 6, 6, generator=g), torch.randn(n, out, generator=g))


CASES = {"mlp": (mlp, mlp_data), "cnn_bn": (small_cnn, cnn_data)}


@pytest.mark.parametrize("case", list(CASES))
def test_source_outputs_bit_identical_after_calibration(case):
    make, data = CASES[case]
    model = make()
    mse = nn.functional.mse_loss
    source, target = data(0), data(1, n=16)
    pacnet.fit(model, mse, source, FIT)
    mask = prune(model, 0.8)
    allocate(model, mask, source, mse, FIT)
    model.eval()
    reference = model(source.x).detach().clone()
    state_after_allocate = {k: v.clone() for k, v in model.state_dict().items()}

    tasks, _ = calibrate(model, mask, target, mse, FIT, lam=0.01)
    model.eval()
    target_out = model(source.x).detach()
    assert not torch.equal(target_out, reference), "calibration should change the target model"
    with tasks.use(model, "source"):
        assert torch.equal(model(source.x), reference)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state_after_allocate[k]), k
    # leaving the context restores the target model exactly
    assert torch.equal(model(source.x), target_out)
    exported = tasks.export(model, "source")
    assert torch.equal(exported(source.x), reference)


def test_bn_statistics_of_the_source_survive_calibration():
    model = small_cnn()
    mask = prune(model, 0.8)
    stats = model.bn1.running_mean.clone()
    tasks, _ = calibrate(model, mask, cnn_data(1, n=16), nn.functional.mse_loss, FIT)
    assert not torch.equal(model.bn1.running_mean, stats)  # the target's own statistics moved
    assert torch.equal(tasks.tensors["source"]["bn1.running_mean"], stats)


def test_allocate_holds_redundant_weights_at_positive_zero():
    model = mlp()
    mask = prune(model, 0.8)
    allocate(
        model,
        mask,
        mlp_data(0),
        nn.functional.mse_loss,
        FitConfig(steps=30, optimizer="adamw", weight_decay=0.1),
    )
    for name, m in mask.items():
        w = model.get_parameter(name).detach()
        assert torch.all(w[~m].view(torch.int32) == 0), name  # +0.0, not -0.0
        assert torch.count_nonzero(w[m]) == m.sum()


def test_calibrate_with_a_new_head_of_another_size():
    model = mlp(out=1)
    mask = prune(model, 0.8)
    allocate(model, mask, mlp_data(0), nn.functional.mse_loss, FitConfig(steps=0))  # only prunes
    source_x = torch.randn(8, 5)
    model.eval()
    reference = model(source_x).detach()
    torch.manual_seed(3)
    head = nn.Linear(16, 4)
    tasks, _ = calibrate(
        model,
        mask,
        mlp_data(1, n=16, out=4),
        nn.functional.mse_loss,
        FIT,
        init={"4.weight": head.weight, "4.bias": head.bias},
    )
    assert model(source_x).shape == (8, 4)
    with tasks.use(model, "source"):
        assert torch.equal(model(source_x), reference)


def test_parameter_report_counts():
    model = mlp()
    mask = prune(model, 0.8)
    tasks = Tasks(model, mask)
    r = parameter_report(model, tasks)
    assert r["essential"] + r["redundant"] == 5 * 16 + 16 * 16
    assert r["redundant"] == round(0.8 * (5 * 16 + 16 * 16))
    assert r["per_task"] == 16 + 16 + 16 + 1  # biases and head weight
    assert r["total"] == sum(p.numel() for p in model.parameters())
    assert "essential" in pacnet.print_trainable_parameters(model, tasks)


def test_negative_lambda_and_second_target_are_rejected():
    model = mlp()
    mask = prune(model, 0.8)
    with pytest.raises(PacnetError, match="lam"):
        calibrate(model, mask, mlp_data(1), nn.functional.mse_loss, FIT, lam=-1)
    tasks, _ = calibrate(model, mask, mlp_data(1), nn.functional.mse_loss, FitConfig(steps=1))
    with pytest.raises(PacnetError, match="no free weights"):
        calibrate(model, mask, mlp_data(1), nn.functional.mse_loss, FIT, tasks=tasks, task="t2")
    with pytest.raises(PacnetError, match="already exists"):
        tasks.add("target")


def test_own_training_loop_recipe_from_the_readme():
    """The README's recipe for users with their own loop keeps the source exact."""
    model = small_cnn()
    x_source = torch.randn(32, 1, 6, 6)
    mask = pacnet.prune(model, ratio=0.8)
    pacnet.zero_redundant(model, mask)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    with pacnet.train_only(model, mask, optimizer):  # Allocate in the user's loop
        for _ in range(5):
            optimizer.zero_grad()
            model(x_source).square().mean().backward()
            optimizer.step()
    model.eval()
    reference = model(x_source).detach()

    tasks = pacnet.Tasks(model, mask)  # Calibrate in the user's loop
    tasks.add("target")
    tasks.activate(model, "target")
    train = tasks.trainable(model)
    params = [p for n, p in model.named_parameters() if n in train]
    optimizer = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3)
    model.train()
    with pacnet.train_only(model, train, optimizer, others="frozen"):
        for _ in range(5):
            optimizer.zero_grad()
            (model(torch.randn(8, 1, 6, 6)) - 1).square().mean().backward()
            optimizer.step()
    model.eval()
    with tasks.use(model, "source"):
        assert torch.equal(model(x_source), reference)
    assert not torch.equal(model(x_source), reference)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_source_stays_exact_under_mixed_precision(amp):
    """Autocast (and fp16's GradScaler) do not break the exact masking."""
    model = small_cnn()
    mse = nn.functional.mse_loss
    cfg = FitConfig(steps=10, batch_size=16, lr=1e-2, amp=amp)
    source, target = cnn_data(0), cnn_data(1, n=16)
    mask = prune(model, 0.8)
    allocate(model, mask, source, mse, cfg)
    model.eval()
    reference = model(source.x).detach().clone()
    tasks, result = calibrate(model, mask, target, mse, cfg, lam=0.01)
    assert result.steps == 10
    model.eval()
    assert not torch.equal(model(source.x), reference)
    with tasks.use(model, "source"):
        assert torch.equal(model(source.x), reference)


def test_the_documented_flow_keeps_a_batchnorm_source_exact_in_train_mode(tmp_path):
    """Running the source view while the model is in train mode (as ``fit`` used to leave
    it) must not move the source's BatchNorm statistics, in memory or in the checkpoint."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 1),
    )  # fmt: skip
    xs, ys, xt, yt = torch.randn(64, 4), torch.randn(64, 1), torch.randn(16, 4), torch.randn(16, 1)
    x = torch.randn(8, 4)
    mse = nn.functional.mse_loss
    mask = pacnet.prune(model, ratio=0.8)
    model.eval()
    pacnet.allocate(model, mask, Data(xs, ys), mse, FitConfig(steps=20, batch_size=32))
    assert not model.training  # fit puts the caller's mode back
    y_alloc = model(x)
    model.train()
    tasks, _ = pacnet.calibrate(model, mask, Data(xt, yt), mse, FitConfig(steps=20, batch_size=8))
    assert model.training
    with torch.no_grad(), tasks.use(model, "source"):
        model(x)  # train mode: would update the source's running statistics
    model.eval()
    with tasks.use(model, "source"):
        assert torch.equal(model(x), y_alloc)
    path = tmp_path / "net.safetensors"
    pacnet.save(path, model, tasks)
    source = pacnet.load(path, copy.deepcopy(model), task="source").eval()
    assert torch.equal(source(x), y_alloc)


def test_allocate_and_calibrate_train_a_sparse_embedding_with_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(30, 8, sparse=True), nn.Linear(8, 8), nn.Linear(8, 2))
    x = torch.randint(0, 30, (64, 5))
    source, target = Data(x, torch.randn(64, 2)), Data(x[:16], torch.randn(16, 2))
    mse = nn.functional.mse_loss
    cfg = FitConfig(steps=10, batch_size=8, optimizer="sgd", lr=0.05)
    mask = prune(model, 0.8, scope="layer")
    allocate(model, mask, source, mse, cfg)
    model.eval()
    reference = model(x).detach().clone()
    tasks, _ = calibrate(model, mask, target, mse, cfg, lam=0.01)
    with tasks.use(model, "source"):
        assert torch.equal(model(x), reference)
    assert not torch.equal(model(x), reference)
    with pytest.raises(PacnetError, match=r"'0\.weight' gets sparse gradients.*optimizer='sgd'"):
        allocate(model, mask, source, mse, FitConfig(steps=1, optimizer="adam"))
