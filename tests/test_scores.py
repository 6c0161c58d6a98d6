"""prune(score="activation"): Wanda's |W_ij|·‖X_j‖₂, checked against hand computations."""

import warnings

import pytest
import torch
from torch import nn

from pacnet import Data, PacnetError, prune
from pacnet.core.scores import activation_scores


def test_the_linear_score_is_the_weight_times_its_input_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(50, 4) * torch.tensor([0.1, 1.0, 10.0, 3.0])
    [score], unseen = activation_scores(model, ["0.weight"], x, batch_size=16)
    want = model[0].weight.detach().abs() * x.norm(dim=0)[None, :]
    torch.testing.assert_close(score, want)
    assert unseen == []
    mask = prune(model, 0.5, scope="layer", score="activation", inputs=x, head="2")
    keep = mask["0.weight"]
    assert want[keep].min() >= want[~keep].max()  # the largest scores are kept
    assert not torch.equal(keep, prune(model, 0.5, scope="layer", head="2")["0.weight"])


@pytest.mark.parametrize("groups", [1, 2])
def test_the_conv_score_uses_each_input_channel_over_all_positions(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(6 * 25, 2))
    x = torch.randn(8, 4, 5, 5) * torch.tensor([0.5, 2.0, 1.0, 4.0])[None, :, None, None]
    [score], _ = activation_scores(model, ["0.weight"], Data(x, torch.zeros(8)))
    channel = x.transpose(0, 1).reshape(4, -1).norm(dim=1)  # ‖X_c‖ over batch and positions
    per = 4 // groups
    want = torch.empty_like(conv.weight)
    for o in range(6):
        g = o // (6 // groups)
        want[o] = conv.weight[o].abs() * channel[g * per : (g + 1) * per][:, None, None]
    torch.testing.assert_close(score, want.detach())


def test_embedding_rows_score_by_use_and_attention_by_its_inputs():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    ids = torch.tensor([[1, 1, 2, 3], [1, 2, 2, 9]])
    [score], _ = activation_scores(nn.Sequential(emb), ["0.weight"], ids)
    counts = torch.bincount(ids.flatten(), minlength=10).float()
    torch.testing.assert_close(score, emb.weight.detach().abs() * counts.sqrt()[:, None])
    assert not bool(score[[0, 4, 5, 6, 7, 8]].any())  # rows never looked up rank last

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.mha(x, x * 2, x * 3)[0])

    model = Attn()
    x = torch.randn(3, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (score, _), unseen = activation_scores(
            model, ["mha.in_proj_weight", "mha.out_proj.weight"], x
        )
    norm = x.reshape(-1, 4).norm(dim=0)
    want = model.mha.in_proj_weight.detach().abs() * torch.cat(
        [norm.expand(4, 4), (2 * norm).expand(4, 4), (3 * norm).expand(4, 4)]
    )
    torch.testing.assert_close(score, want)
    assert unseen == ["mha.out_proj.weight"]  # the fused forward never calls out_proj


def test_activation_scores_need_inputs_the_model_takes():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(PacnetError, match="pass inputs="):
        prune(model, 0.8, score="activation")
    with pytest.raises(PacnetError, match="cannot run on the inputs"):
        prune(model, 0.8, score="activation", inputs=torch.randn(5, 3))
    with pytest.raises(PacnetError, match="score must be one of"):
        prune(model, 0.8, score="wanda")
