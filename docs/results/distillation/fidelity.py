"""How many inputs distillation needs: a tiny BERT and ViT classifier (built from configs,
trained 150 steps on a source labelling), pruned at 0.8, then Allocate by distillation on
n unlabelled inputs; the KL to the unpruned model on those n and on 128 other inputs.

Run from the repository root: python docs/results/distillation/fidelity.py
(prints the table of docs/results/distillation/README.md; about a minute on 2 CPU cores).
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

import pacnet
from pacnet.core.pac import zero_redundant

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import zoo  # tiny models from configs, nothing downloaded

warnings.simplefilter("ignore")
torch.set_num_threads(1)
VARIANTS = ("default", "no dropout", "T = 1", "lr 1e-4", "checked")
"""default: holdout=0, dropout on, T = 2, lr 1e-3; checked: the default holdout=0.2."""


def kl(model, teacher, batch) -> float:
    """Mean KL(teacher ‖ model) per sample, at temperature 1, both in eval mode."""
    model.eval(), teacher.eval()
    with torch.no_grad():
        s, t = model(**batch).logits, teacher(**batch).logits
    return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                          reduction="batchmean"))  # fmt: skip


def main() -> None:
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(1, zoo.VOCAB, (n, 8), generator=g)

    cases = {
        "BERT": (zoo._hf(zoo.bert_cls), lambda n: {"input_ids": ids(n)}),
        "ViT": (
            zoo._hf(zoo.vit),
            lambda n: {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)},
        ),
    }  # fmt: skip
    print("| model | inputs | variant | KL on them: start → after | KL on 128 others |")
    print("|---|---|---|---|---|")
    for name, (build, batch) in cases.items():
        base = build()
        source = []
        for _ in range(8):
            b = batch(32)
            key = next(iter(b.values()))
            b["labels"] = (key.reshape(32, -1).float().sum(-1) * 7).floor().long() % 3
            source.append(b)
        pacnet.fit(base, None, source, pacnet.FitConfig(steps=150))
        others = batch(128)
        plan = {8: VARIANTS, 32: VARIANTS, 128: ("default", "checked"), 512: ("default", "checked")}
        for n, variants in plan.items():
            inputs = [batch(8) for _ in range(n // 8)]
            seen = {k: torch.cat([b[k] for b in inputs]) for k in inputs[0]}
            for variant in variants:
                model, teacher = copy.deepcopy(base), copy.deepcopy(base).eval()
                if variant == "no dropout":
                    for module in model.modules():
                        if isinstance(module, torch.nn.Dropout):
                            module.p = 0.0
                mask = pacnet.prune(model, 0.8, warn=False)
                start = copy.deepcopy(model)
                zero_redundant(start, mask)
                lr = 1e-4 if variant == "lr 1e-4" else 1e-3
                cfg = pacnet.FitConfig(steps=40 if n <= 32 else 200, lr=lr)
                temperature = 1.0 if variant == "T = 1" else 2.0
                holdout = 0.2 if variant == "checked" else 0.0
                pacnet.allocate(model, mask, inputs, None, cfg, teacher=teacher,
                                temperature=temperature, holdout=holdout)  # fmt: skip
                print(f"| {name} | {n} | {variant} | {kl(start, teacher, seen):.4f} → "
                      f"{kl(model, teacher, seen):.4f} | {kl(start, teacher, others):.4f} → "
                      f"{kl(model, teacher, others):.4f} |")  # fmt: skip

if __name__ == "__main__":
    main()
