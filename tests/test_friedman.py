import math

import torch

from pacnet.benchmarks.friedman import Concept, Friedman, FriedmanConfig

SMALL = FriedmanConfig(source_samples=400, target_pool=100, target_test=200)


def test_base_concept_is_friedman_1():
    x = torch.rand(50, 10, dtype=torch.float64)
    base = Concept((1.0,) * 4, (1.0,) * 5, (0.0,) * 5)
    classic = (
        10 * torch.sin(math.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
    )
    assert torch.allclose(base(x), classic)


def test_seed_pairs_the_target_and_sizes_are_prefixes():
    bench = Friedman(SMALL)
    a, b = bench.target(3, 20), Friedman(SMALL).target(3, 20)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    larger = bench.target(3, 50)
    assert torch.equal(larger.train.x[:20], a.train.x)
    assert not torch.equal(bench.target(4, 20).train.x, a.train.x)
    assert bench.concept(3) != bench.concept(4) != bench.source_concept


def test_distance_scales_the_concept_spread():
    near = Friedman(FriedmanConfig(source_samples=400, distance=0.0))
    assert near.concept(0) == Concept((1.0,) * 4, (1.0,) * 5, (0.0,) * 5)
    spreads = []
    for d in (1.0, 4.0):
        bench = Friedman(FriedmanConfig(source_samples=400, distance=d))
        spreads.append(torch.tensor([bench.concept(s).a for s in range(20)]).std())
    assert 3.0 < spreads[1] / spreads[0] < 5.0


def test_labels_are_standardised_with_source_statistics():
    bench = Friedman(SMALL)
    train = bench.source()
    y = torch.cat([train.train.y, train.val.y])
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-2


def test_early_protocol_holds_out_part_of_the_target_samples():
    import pytest

    from pacnet import PacnetError

    bench = Friedman(
        FriedmanConfig(
            source_samples=400,
            target_pool=100,
            target_test=200,
            protocol="early",
            target_val_fraction=0.2,
        )
    )
    task = bench.target(0, 20)
    fixed = Friedman(SMALL).target(0, 20)
    assert len(task.train) == 16 and len(task.val) == 4
    assert torch.equal(torch.cat([task.val.x, task.train.x]), fixed.train.x)
    assert bench.target_fit().patience == 10 and Friedman(SMALL).target_fit().patience is None
    with pytest.raises(PacnetError, match="holds out 1 of the 1 target samples"):
        bench.target(0, 1)
