"""Masks (pacnet.core.mask): ``prune``'s exact counts, scopes and ties, the default rule,
packing and mask files, and what it refuses (bad ratios, NaN weights, embeddings with
max_norm)."""

import json
import math
import warnings

import pytest
import torch
from conftest import mlp
from torch import nn

import pacnet
from pacnet import Mask, PacnetError, prune


def hand_model():
    """Two prunable layers with known weights and a head."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.5, 0.3], [0.9, -0.2, 0.05]]))
        model[1].weight.copy_(torch.tensor([[0.4, -0.8], [0.01, 0.6]]))
        model[2].weight.fill_(100.0)  # the head: never pruned
    return model


def test_global_counts_and_choice_on_hand_made_weights():
    mask = prune(hand_model(), ratio=0.5, scope="global")
    # 10 prunable weights, round(0.5 * 10) = 5 redundant: |w| in {0.01, 0.05, 0.1, 0.2, 0.3}
    assert list(mask) == ["0.weight", "1.weight"]
    assert mask["0.weight"].tolist() == [[False, True, False], [True, False, False]]
    assert mask["1.weight"].tolist() == [[True, True], [False, True]]
    assert (mask.essential, mask.redundant, mask.total) == (5, 5, 10)


def test_layer_scope_counts_on_hand_made_weights():
    mask = prune(hand_model(), ratio=0.5, scope="layer")
    # layer 0: round(3.0) = 3 redundant (0.05, 0.1, 0.2); layer 1: round(2.0) = 2 (0.01, 0.4)
    assert mask["0.weight"].tolist() == [[False, True, True], [True, False, False]]
    assert mask["1.weight"].tolist() == [[False, True], [False, True]]
    assert mask.counts() == {"0.weight": (3, 6), "1.weight": (2, 4)}


def test_ties_are_broken_by_position():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4, [1.0] * 4, [3.0] * 4]))
    mask = prune(model, ratio=0.3)  # round(4.8) = 5: the four 1s of row 0, then the first of row 2
    assert (~mask["0.weight"]).nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [2, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8, 0.97])
def test_global_selection_matches_a_full_sort(dtype, ratio):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20), nn.Linear(20, 2)).to(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = prune(model, ratio)
    said = " ".join(str(w.message) for w in caught if "would keep no" in str(w.message))
    floored = [n for n in mask if n in said]  # one global threshold would empty them
    assert floored == ([] if ratio < 0.9 else ["0.weight"])  # the 40-input layer's small |w|
    kept = [n for n in mask if n not in floored]
    weights = torch.cat([model.get_parameter(n).flatten() for n in kept]).abs().double()
    essential = torch.cat([mask[n].flatten() for n in kept])
    n_floored = sum(mask[n].numel() for n in floored)  # all redundant under the threshold
    total = weights.numel() + n_floored
    assert int((~essential).sum()) + n_floored == round(ratio * total)
    assert weights[~essential].max() <= weights[essential].min()
    for n in floored:  # its own largest share instead
        w, keep = model.get_parameter(n).detach().abs().double(), mask[n]
        assert int(keep.sum()) == w.numel() - round(ratio * w.numel())
        assert w[~keep].max() <= w[keep].min()


def test_default_rule_skips_head_biases_and_norms():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2)
    )
    assert pacnet.prunable_names(model) == ["0.weight", "3.weight"]
    assert pacnet.prunable_names(model, head=None) == ["0.weight", "3.weight", "4.weight"]
    assert pacnet.prunable_names(model, prunable=lambda n, p: p.dim() == 1) == [
        "0.bias",
        "1.weight",
        "1.bias",
        "3.bias",
        "4.bias",
    ]


def test_complement_and_density():
    mask = prune(mlp(), 0.8)
    inverse = ~mask
    assert inverse.essential == mask.redundant
    assert ~inverse == mask
    assert math.isclose(mask.density, mask.essential / mask.total)
    assert "all" in mask.summary()


def test_pack_roundtrip_and_one_bit_per_weight_on_disk(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 101), nn.Linear(101, 1))
    mask = prune(model, 0.8)
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    assert Mask.load(path) == mask
    header_allowance = 1024
    assert path.stat().st_size <= mask.total / 8 + header_allowance
    packed_bits = 8 * sum(t.numel() for t in mask.pack()[0].values())
    assert 8 * path.stat().st_size < 0.9 * packed_bits + 8 * header_allowance  # compressed


def test_uncompressed_version_1_mask_files_still_load(tmp_path):
    from pacnet.io import write_safetensors

    mask = prune(mlp(), 0.8)
    packed, shapes = mask.pack()
    path = tmp_path / "old.safetensors"
    meta = {"format": "pacnet.mask", "version": "1", "shapes": json.dumps(shapes)}
    write_safetensors(path, packed, meta)
    assert Mask.load(path) == mask


def test_corrupt_compressed_mask_is_a_clear_error(tmp_path):
    from pacnet.io import read_safetensors, write_safetensors

    mask = prune(mlp(), 0.8)
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    tensors, meta = read_safetensors(path)
    write_safetensors(path, {n: t[: max(1, t.numel() // 2)] for n, t in tensors.items()}, meta)
    with pytest.raises(PacnetError, match="corrupt"):
        Mask.load(path)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5, float("nan"), "x"])
def test_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(PacnetError, match="ratio"):
        prune(mlp(), ratio)


def test_empty_prunable_set_is_rejected():
    with pytest.raises(PacnetError, match="no prunable parameters"):
        prune(nn.Sequential(nn.Linear(3, 1)), 0.5)  # only a head


def test_mismatched_mask_is_rejected():
    mask = prune(mlp(), 0.5)
    other = nn.Sequential(
        nn.Linear(5, 17), nn.ReLU(), nn.Linear(17, 16), nn.ReLU(), nn.Linear(16, 1)
    )
    with pytest.raises(PacnetError, match="shape"):
        mask.check(other)
    renamed = nn.Sequential(nn.Linear(5, 16))
    with pytest.raises(PacnetError, match="not a parameter"):
        mask.check(renamed)


def test_nan_weights_are_rejected():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(PacnetError, match="NaN"):
        prune(model, 0.5)


def test_mask_file_that_is_not_a_mask(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(PacnetError, match="not a readable safetensors"):
        Mask.load(bad)


def test_unsupported_dtype_is_rejected():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].weight.data = model[0].weight.data.to(torch.float8_e4m3fn)
    with pytest.raises(PacnetError, match="dtype"):
        prune(model, 0.5)


def test_an_embedding_with_max_norm_cannot_be_masked():
    model = nn.Sequential(nn.Embedding(20, 8, max_norm=1.0), nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(PacnetError, match="max_norm"):
        prune(model, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = prune(model, 0.5, embeddings=False)
    assert "0.weight" not in mask
