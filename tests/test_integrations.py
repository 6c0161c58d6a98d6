"""The Hugging Face Trainer and lightning.Trainer callbacks: exact masked training inside
the trainers' own loops (accumulation 4, clipping, a scheduler, bf16 autocast on CPU), the
source exact after Calibrate, and Hugging Face-style directories reloading bit for bit."""

from __future__ import annotations

import warnings

import lightning  # the extras pacnet[hf] and pacnet[lightning]; `make test` installs them
import pytest
import torch
from torch import nn

import pacnet


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


class Watch:
    """Records every entry that must not move and checks it after each optimizer step."""

    def __init__(self, model: nn.Module, trainable: dict, others: str):
        self.model, self.trainable = model, trainable
        params = dict(model.named_parameters())
        self.frozen = {
            n: (p.detach()[~trainable[n]] if n in trainable else p.detach()).clone()
            for n, p in params.items()
            if n in trainable or others == "frozen"
        }
        self.steps = 0

    def check(self) -> None:
        params = dict(self.model.named_parameters())
        for n, want in self.frozen.items():
            got = params[n].detach()
            got = got[~self.trainable[n]] if n in self.trainable else got
            assert torch.equal(bits(got), bits(want)), f"{n} moved at step {self.steps}"
        self.steps += 1


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(bits(a[k]), bits(b[k])), k


# ---- Hugging Face Trainer -----------------------------------------------------------------
class TokenTask(torch.utils.data.Dataset):
    """Sequences of token ids; the label is a function of the tokens (``salt``: which)."""

    def __init__(self, n: int, salt: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 30, (n, 8), generator=gen)
        self.labels = ((self.ids * (salt + 1)).sum(1) // 7) % 2

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=30, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(cfg)


def hf_train(model, data, callback, watch, tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Check(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            watch.check()

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
        gradient_accumulation_steps=4, max_grad_norm=0.5, learning_rate=1e-2,
        lr_scheduler_type="linear", warmup_steps=2, bf16=True, use_cpu=True, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Check()]).train()
    assert watch.steps == 6 and callback.handle is None  # checked at every step; closed
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)  # forward out of autocast


def test_hugging_face_trainer_allocate_calibrate_and_directory(tmp_path):
    from pacnet.integrations.transformers import (
        PacNetCallback,
        from_pretrained,
        save_pretrained,
        tasks_from_pretrained,
    )

    model = tiny_bert()
    mask = pacnet.prune(model, 0.8)
    pacnet.zero_redundant(model, mask)
    callback = PacNetCallback(model, mask)
    hf_train(model, TokenTask(96, 0, 0), callback, Watch(model, mask, "trainable"), tmp_path)
    after_allocate = state(model)
    probe = TokenTask(16, 0, 5).ids
    model.eval()
    source = model(probe).logits

    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    trainable = tasks.trainable(model)
    callback = PacNetCallback(model, trainable, l2=0.01)
    watch = Watch(model, trainable, "frozen")
    hf_train(model, TokenTask(48, 1, 1), callback, watch, tmp_path)
    model.eval()
    target = model(probe).logits
    assert not torch.equal(target, source)
    with tasks.use(model, "source"):
        assert_same(state(model), after_allocate)
        assert torch.equal(model(probe).logits, source)

    save_pretrained(tmp_path / "net", model, tasks)
    assert torch.equal(from_pretrained(tmp_path / "net", "source")(probe).logits, source)
    assert torch.equal(from_pretrained(tmp_path / "net", "target")(probe).logits, target)
    loaded, loaded_tasks = tasks_from_pretrained(tmp_path / "net")
    for task in ("source", "target"):
        with tasks.use(model, task), loaded_tasks.use(loaded, task):
            assert_same(state(loaded), state(model))


def test_hugging_face_callback_refuses_allocate_on_unzeroed_weights():
    from pacnet.integrations.transformers import PacNetCallback

    model = tiny_bert()
    with pytest.raises(pacnet.PacnetError, match="zero_redundant"):
        PacNetCallback(model, pacnet.prune(model, 0.8))


# ---- lightning ----------------------------------------------------------------------------
class Images(lightning.LightningModule):
    """A small CNN with BatchNorm on generated images, with a scheduler."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 8 * 8, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)}


def images(n: int, salt: int, seed: int) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = ((x.mean((1, 2, 3)) * (salt + 3) * 10).floor().long()) % 3
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=gen)


def lightning_train(module, loader, callback, watch):
    class Check(lightning.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step > watch.steps:  # an optimizer step has just run
                watch.check()

    trainer = lightning.Trainer(
        max_steps=6, accumulate_grad_batches=4, gradient_clip_val=0.5, precision="bf16-mixed",
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback, Check()],
    )  # fmt: skip
    trainer.fit(module, loader)
    assert watch.steps == 6 and callback.handle is None


def test_lightning_trainer_allocate_calibrate_and_checkpoint(tmp_path):
    from pacnet.integrations.lightning import PacNetCallback

    module = Images()
    net = module.net
    mask = pacnet.prune(net, 0.8)
    pacnet.zero_redundant(net, mask)
    callback = PacNetCallback(net, mask)
    lightning_train(module, images(96, 0, 0), callback, Watch(net, mask, "trainable"))
    after_allocate = state(net)
    probe = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    net.eval()
    source = net(probe)
    net.train()  # Lightning trains each layer in the mode it finds it in

    tasks = pacnet.Tasks(net, mask)
    tasks.add("target")
    tasks.activate(net, "target")
    trainable = tasks.trainable(net)
    callback = PacNetCallback(net, trainable, l2=0.01)
    lightning_train(module, images(48, 1, 1), callback, Watch(net, trainable, "frozen"))
    net.eval()
    target = net(probe)
    with tasks.use(net, "source"):
        assert_same(state(net), after_allocate)
        assert torch.equal(net(probe), source)
    assert torch.equal(net(probe), target)
    pacnet.save(tmp_path / "net.safetensors", net, tasks)
    fresh = Images().net
    assert torch.equal(
        pacnet.load(tmp_path / "net.safetensors", fresh, "source").eval()(probe), source
    )


def test_lightning_warns_when_the_network_would_train_in_eval_mode():
    from pacnet.integrations.lightning import PacNetCallback

    module = Images()
    net = module.net
    mask = pacnet.prune(net, 0.8)
    pacnet.zero_redundant(net, mask)

    def fit() -> list[str]:
        trainer = lightning.Trainer(
            max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
            callbacks=[PacNetCallback(net, mask)],
        )  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, images(8, 0, 0))
        return [str(w.message) for w in caught if str(w.message).startswith("pacnet:")]

    net.eval()  # e.g. after measuring the source: Lightning would train it so
    counted = int(net[1].num_batches_tracked)
    said = fit()
    assert len(said) == 1 and "2 BatchNorm or dropout layer(s) of the network ('1', …)" in said[0]
    assert "call module.train() before trainer.fit" in said[0]
    assert int(net[1].num_batches_tracked) == counted  # what it warns about: no statistics
    net.train()
    assert fit() == [] and int(net[1].num_batches_tracked) == counted + 2


def test_import_pacnet_imports_no_optional_library():
    import subprocess
    import sys

    code = (
        "import sys, pacnet, pacnet.cli\n"
        "loaded = [m for m in ('transformers', 'lightning', 'peft', 'accelerate') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- what the callbacks refuse or repair -------------------------------------------------
def hf_args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
        learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    return TrainingArguments(**{**base, **kw})


def test_a_run_stopped_by_an_exception_does_not_mask_the_next_one(tmp_path):
    from transformers import Trainer, TrainerCallback

    from pacnet.integrations.transformers import PacNetCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    model = tiny_bert()
    mask = pacnet.prune(model, 0.8)
    pacnet.zero_redundant(model, mask)
    stopped = PacNetCallback(model, mask)
    trainer = Trainer(model=model, args=hf_args(tmp_path), train_dataset=TokenTask(32, 0, 0),
                      callbacks=[stopped, Stop()])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        trainer.train()  # no close(): its hooks would zero the redundant entries' gradients
    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    weight, free = dict(model.named_parameters())[name], ~mask[name]
    before = weight.detach()[free].clone()
    callback = PacNetCallback(model, tasks.trainable(model), l2=0.01)
    trainer = Trainer(model=model, args=hf_args(tmp_path), train_dataset=TokenTask(32, 1, 1),
                      callbacks=[callback])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="still masking this model"):
        trainer.train()
    assert stopped.handle is None
    assert bool((weight.detach()[free] != before).all())  # the redundant entries trained


def test_a_trainer_made_before_activate_is_refused(tmp_path):
    from transformers import Trainer

    from pacnet.integrations.transformers import PacNetCallback

    model = tiny_bert()
    mask = pacnet.prune(model, 0.8)
    pacnet.zero_redundant(model, mask)
    trainer = Trainer(model=model, args=hf_args(tmp_path), train_dataset=TokenTask(32, 0, 0),
                      callbacks=[PacNetCallback(model, mask)])  # fmt: skip
    trainer.train()
    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    trainer.remove_callback(PacNetCallback)  # the same Trainer: its optimizer is the old one
    trainer.add_callback(PacNetCallback(model, tasks.trainable(model), l2=0.01))
    with pytest.raises(pacnet.PacnetError, match=r"build the Trainer .* after tasks\.activate"):
        trainer.train()


def test_directories_of_compiled_and_bfloat16_models_reload_bit_for_bit(tmp_path):
    from pacnet.integrations.transformers import from_pretrained, save_pretrained

    model = tiny_bert()
    mask = pacnet.prune(model, 0.8)
    ids, labels = TokenTask(8, 0, 0).ids, TokenTask(8, 0, 0).labels
    cfg = pacnet.FitConfig(steps=2, batch_size=8)
    pacnet.allocate(model, mask, [{"input_ids": ids, "labels": labels}], None, cfg)
    tasks, _ = pacnet.calibrate(model, mask, [{"input_ids": ids, "labels": 1 - labels}], None, cfg)
    save_pretrained(tmp_path / "compiled", torch.compile(model), tasks)
    assert type(from_pretrained(tmp_path / "compiled", "source")) is type(model)
    model.to(torch.bfloat16)
    tasks.to(torch.bfloat16)
    model.eval()
    with tasks.use(model, "source"):
        source = model(ids).logits
    save_pretrained(tmp_path / "bf16", model, tasks)
    loaded = from_pretrained(tmp_path / "bf16", "source")
    assert loaded.classifier.weight.dtype == torch.bfloat16
    assert torch.equal(loaded(ids).logits, source)


def test_a_mask_other_than_prunes_is_not_sent_to_zero_redundant():
    from pacnet.integrations.transformers import PacNetCallback

    model = tiny_bert()
    mask = pacnet.prune(model, 0.8)
    pacnet.zero_redundant(model, mask)
    with pytest.raises(pacnet.PacnetError, match=r"plain dict, dict\(~mask\)"):
        PacNetCallback(model, ~mask)
    PacNetCallback(model, dict(~mask), l2=0.01)  # trains the redundant entries


def test_lightning_true_half_precision_that_would_round_the_source_is_refused():
    from pacnet.integrations.lightning import PacNetCallback

    module = Images()
    net = module.net
    mask = pacnet.prune(net, 0.8)
    pacnet.zero_redundant(net, mask)
    tasks = pacnet.Tasks(net, mask)
    tasks.add("target")
    tasks.activate(net, "target")
    before = state(net)
    trainer = lightning.Trainer(
        max_steps=2, precision="bf16-true", accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[PacNetCallback(net, tasks.trainable(net), l2=0.01)],
    )  # fmt: skip
    with pytest.raises(pacnet.PacnetError, match="rounds the source's frozen weights"):
        trainer.fit(module, images(16, 1, 1))
    assert_same(state(net), before)  # refused before Lightning converted anything
