"""Property tests (hypothesis): mask counts and complements, packing, exact masked training."""

import itertools
import warnings

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from pacnet import Mask, prune, train_only
from pacnet.core.mask import select_essential

shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4)
ratios = st.floats(0.01, 0.99)


def layered(dims, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(i, o) for o, i in dims] + [nn.Linear(1, 1)]  # last: the head
    with torch.no_grad():
        for layer in layers[:-1]:
            w = torch.randn(layer.weight.shape, generator=gen)
            layer.weight.copy_(w.round() if ties else w)  # rounding makes many ties
    return nn.ModuleList(layers)


@settings(max_examples=60, deadline=None)
@given(shapes, ratios, st.integers(0, 10_000), st.booleans(), st.sampled_from(["global", "layer"]))
def test_counts_and_complement(dims, ratio, seed, ties, scope):
    model = layered(dims, seed, ties)
    names = [f"{i}.weight" for i in range(len(dims))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tensor the global threshold would empty
        mask = prune(model, ratio, scope=scope, prunable=names)
    if scope == "global":  # one threshold; a tensor it would empty keeps its own share
        weights = [model.get_parameter(n).detach() for n in names]
        plain = select_essential(weights, round(ratio * sum(w.numel() for w in weights)))
        own = sum(
            max(1, w.numel() - round(ratio * w.numel()))
            for w, m in zip(weights, plain, strict=True)
            if not m.any()
        )
        assert mask.essential == sum(int(m.sum()) for m in plain) + own
        assert all(bool(m.any()) for m in mask.values())
    else:
        for _, (kept, total) in mask.counts().items():
            assert total - kept == min(round(ratio * total), total - 1)  # never all zeros
    inverse = ~mask
    assert inverse.essential == mask.redundant and ~inverse == mask
    for name, m in mask.items():  # every kept |w| is at least every pruned |w| of the scope
        w = model.get_parameter(name).detach().abs()
        if scope == "layer" and m.any() and (~m).any():
            assert w[m].min() >= w[~m].max()
    packed, shapes_ = mask.pack()
    assert Mask.unpack(packed, shapes_) == mask
    assert sum(p.numel() for p in packed.values()) == sum(
        (m.numel() + 7) // 8 for m in mask.values()
    )


optimizers = st.sampled_from(
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3),
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.1),
    ]
)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 8), min_size=2, max_size=4),
    st.integers(0, 10_000),
    optimizers,
    st.floats(0.05, 0.95),
)
def test_frozen_entries_stay_exact_for_random_masks(widths, seed, make_opt, density):
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 1))
    gen = torch.Generator().manual_seed(seed + 1)
    trainable = {
        n: torch.rand(p.shape, generator=gen) < density
        for n, p in model.named_parameters()
        if n.endswith("weight")
    }
    assume(any(bool(m.any()) for m in trainable.values()))  # something must train
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_opt(model.parameters())
    with train_only(model, trainable, optimizer, others="frozen"):
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(4, widths[0], generator=gen)).square().sum().backward()
            optimizer.step()
    for name, p in model.named_parameters():
        frozen = ~trainable[name] if name in trainable else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(
            p.detach()[frozen].view(torch.int32), before[name][frozen].view(torch.int32)
        )
