"""LoRA (Hu et al. 2021) through Hugging Face's ``peft``: low-rank adapters on the frozen body.

``peft.get_peft_model`` wraps our own modules: adapters on every weight layer whose weight
the default mask covers (the same rule as pruning), and trainable copies of the head and of
every normalisation layer (``modules_to_save``: the target gets its own BatchNorm
statistics, as under PAC-Net; otherwise training would move the source's running
statistics). The base weights do not change, so the source model is the wrapped model with
its adapters disabled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from pacnet.core.roles import covered_layers, is_norm
from pacnet.errors import PacnetError, check
from pacnet.methods.base import Method, Transfer, TransferContext, count, install
from pacnet.methods.baselines import everything, head_of
from pacnet.methods.plan import TrainingPlan
from pacnet.training.train import FitResult


@dataclass
class LoRAParams:
    """LoRA rank r (main strength), scaling α (``None``: α = r) and dropout."""

    rank: int = 4
    alpha: float | None = None
    dropout: float = 0.0
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"rank": (1, 2, 4, 8, 16, 32)}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"rank": ("int_log", 1, 64)}

    def __post_init__(self) -> None:
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(0 <= self.dropout < 1, f"dropout must lie in [0, 1), got {self.dropout}")


_PEFT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _adaptable(module: nn.Module) -> bool:
    """Whether peft's LoRA can wrap ``module`` (Linear, convolutions, GPT-2's ``Conv1D``)."""
    return isinstance(module, _PEFT_LAYERS) or type(module).__name__ == "Conv1D"


class AdaptersOff(nn.Module):
    """The base model inside a peft model: runs it with every adapter disabled."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


class LoRA(Method):
    name = "lora"
    summary = "low-rank adapters on the frozen source body via peft, head trained (Hu et al. 2021)"
    Params = LoRAParams
    stacks = True

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise PacnetError(
                "method 'lora' needs Hugging Face peft: pip install 'pacnet[hf]'"
            ) from None

        p: LoRAParams = self.params
        base = copy.deepcopy(ctx.source_model)
        head_name, _ = head_of(base)
        targets = [n for n in covered_layers(base) if _adaptable(base.get_submodule(n))]
        norms = [n for n, m in base.named_modules() if is_norm(m)]
        config = LoraConfig(
            r=p.rank,
            lora_alpha=p.alpha if p.alpha is not None else p.rank,
            lora_dropout=p.dropout,
            target_modules=targets,
            modules_to_save=[head_name, *norms],
        )
        model = get_peft_model(base, config)
        if ctx.new_head is not None:  # the trainable copy of the head becomes the target's
            copy_of_head = model.base_model.model.get_submodule(head_name).modules_to_save[
                "default"
            ]
            install(copy_of_head, {n.rpartition(".")[2]: t for n, t in ctx.new_head.items()})
        trainable = everything(model)
        n_trained = sum(w.numel() for w in model.parameters() if w.requires_grad)
        n_source = count(ctx.source_model)

        def finish(result: FitResult) -> Transfer:
            return Transfer(
                model,
                AdaptersOff(model),
                trainable=n_trained,
                total=n_source + n_trained,
                stored=n_source + n_trained,
                fit=result,
                details={"rank": p.rank, "targets": targets},
            )

        return TrainingPlan(model, trainable, finish)
