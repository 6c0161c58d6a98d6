"""PAC-Net with the Hugging Face Trainer: a tiny BERT-style classifier (random init from a
config, nothing downloaded) moves from one generated text task to another.

Source task: does a sentence contain more "positive" than "negative" tokens? Target task,
with few labelled sentences: is its first token from the upper half of the vocabulary?
Allocate and Calibrate both run in ``transformers.Trainer`` (its AdamW, linear schedule,
gradient clipping); ``PacNetCallback`` keeps the masking exact, and the saved directory
reloads either task bit for bit.

    pip install 'pacnet[hf]'
    python examples/hf_trainer_text.py
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

import pacnet
from pacnet.integrations.transformers import PacNetCallback, from_pretrained, save_pretrained

VOCAB, LENGTH = 64, 12


class Sentences(torch.utils.data.Dataset):
    """Random token sequences with a label computed from them (``task``: which rule)."""

    def __init__(self, n: int, task: str, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, VOCAB, (n, LENGTH), generator=gen)
        if task == "sentiment":  # tokens 2..20 "positive", 21..40 "negative"
            positive = (self.ids < 21).sum(1)
            negative = ((self.ids >= 21) & (self.ids < 41)).sum(1)
            self.labels = (positive > negative).long()
        else:
            self.labels = (self.ids[:, 0] >= VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def train(model, data, callbacks: list, folder: Path, steps: int, lr: float) -> None:
    args = TrainingArguments(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=32,
        learning_rate=lr, lr_scheduler_type="linear", max_grad_norm=1.0, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no metrics dictionary on the screen
    trainer.train()


@torch.no_grad()
def accuracy(model, data: Sentences) -> float:
    model.eval()
    return float((model(data.ids).logits.argmax(-1) == data.labels).float().mean())


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=LENGTH, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    source, source_test = Sentences(4000, "sentiment", 1), Sentences(1000, "sentiment", 2)
    target, target_test = Sentences(64, "first", 3), Sentences(1000, "first", 4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train(model, source, [], folder, 250, 1e-3)  # the source model, as you have it
        print(f"source model: source accuracy {accuracy(model, source_test):.3f}")

        mask = pacnet.prune(model, ratio=0.8)
        print(mask.plan.describe())
        pacnet.zero_redundant(model, mask)
        train(model, source, [PacNetCallback(model, mask)], folder, 150, 1e-3)  # Allocate
        source_after_allocate = accuracy(model, source_test)
        before_target = accuracy(model, target_test)
        logits = model(source_test.ids).logits
        print(f"after Allocate: source accuracy {source_after_allocate:.3f}")

        tasks = pacnet.Tasks(model, mask)
        tasks.add("target")
        tasks.activate(model, "target")
        calibrate = PacNetCallback(model, tasks.trainable(model), l2=0.01)
        train(model, target, [calibrate], folder, 100, 1e-2)  # Calibrate on 64 sentences
        target_accuracy = accuracy(model, target_test)

        save_pretrained(folder / "net", model, tasks)
        source_model = from_pretrained(folder / "net", task="source")
        exact = torch.equal(source_model(source_test.ids).logits, logits)
        source_after = accuracy(source_model, source_test)
        print(f"after Calibrate: source accuracy {source_after:.3f} (bit-identical: {exact})")
        print(
            f"target accuracy {target_accuracy:.3f} from 64 labelled sentences "
            f"(the source model on the target: {before_target:.3f})"
        )
        assert exact and source_after == source_after_allocate
        assert target_accuracy > before_target + 0.1


if __name__ == "__main__":
    warnings.filterwarnings("ignore", module="transformers")
    main()
