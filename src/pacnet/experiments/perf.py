"""``pacnet bench``: what PAC-Net's bookkeeping costs, measured side by side in one run.

* step time of a calibrate step (masked, regularised) and of an allocate step, each divided
  by a plain fine-tuning step of the same model and batch (interleaved repeats, median and
  spread), for the Friedman MLP, a wide MLP (>= 10 M parameters) and ResNet-18;
* peak memory (VmHWM of a fresh process running the steps) masked / plain;
* checkpoint bytes for source + target in one pacnet file / two dense safetensors files,
  and mask bits per prunable weight on disk;
* time and peak memory of a global mask over 10 M and 100 M weights;
* ODE and PDE data generation throughput (trajectory-steps per second).

No number here is a test threshold; the figures go into the notes and issues.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.benchmarks.resnet import resnet18
from pacnet.core.freeze import train_only
from pacnet.core.mask import prune
from pacnet.core.pac import trainable_groups, zero_redundant
from pacnet.core.tasks import Tasks
from pacnet.training.train import FitConfig, make_optimizer

MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {
    "friedman_mlp": lambda: (MLP(10, (128, 128), 1), torch.randn(32, 10), torch.randn(32, 1)),
    "wide_mlp": lambda: (
        MLP(1024, (2048, 2048, 2048), 10),
        torch.randn(64, 1024),
        torch.randn(64, 10),
    ),
    "resnet18": lambda: (
        resnet18(10, 3, 1.0, "small"),
        torch.randn(8, 3, 32, 32),
        torch.randn(8, 10),
    ),
}


def _optimizer(params, name: str) -> torch.optim.Optimizer:
    """The optimizer pacnet's own loop builds (fused on CPU/CUDA), the same for every mode;
    SGD with momentum 0.9."""
    return make_optimizer(list(params), FitConfig(lr=1e-4, optimizer=name))


def _stepper(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: str):
    """(step function, context manager factory) for 'plain', 'allocate' or 'calibrate'."""
    from contextlib import nullcontext

    loss_fn = nn.functional.mse_loss
    if mode == "plain":
        opt = _optimizer(model.parameters(), optimizer)
        context = nullcontext
    else:
        mask = prune(model, 0.8)
        zero_redundant(model, mask)
        if mode == "allocate":
            opt = _optimizer(model.parameters(), optimizer)

            def context():
                return train_only(model, mask, opt)
        else:
            tasks = Tasks(model, mask)
            tasks.add("target")
            tasks.activate(model, "target")
            trainable = tasks.trainable(model)  # optimizer groups as pacnet.calibrate's
            opt = _optimizer(trainable_groups(model, tasks, trainable), optimizer)

            def context():  # λ = 0.01 as a fused gradient term, as pacnet.calibrate does
                return train_only(model, trainable, opt, others="frozen", l2=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step, context


def _warmed_up(
    name: str, optimizer: str, stack: ExitStack, device: str = "cpu"
) -> dict[str, Callable[[], None]]:
    """Step functions of plain / allocate / calibrate on ``device``, each inside its context
    (entered on ``stack``) and warmed up, all before any is measured: the allocator then
    favours none."""
    runs = {}
    for mode in ("plain", "allocate", "calibrate"):
        torch.manual_seed(0)
        model, x, y = MODELS[name]()
        model, x, y = model.to(device), x.to(device), y.to(device)
        step, context = _stepper(mode, model, x, y, optimizer)
        stack.enter_context(context())
        for _ in range(3):
            step()
        runs[mode] = step
    return runs


def step_times(
    name: str, repeats: int, steps: int, optimizer: str = "adam", device: str = "cpu"
) -> dict[str, Any]:
    """Median seconds per step of plain / allocate / calibrate on ``device``, measured
    interleaved (synchronised with the GPU around each measurement on CUDA)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    with ExitStack() as stack:
        runs = _warmed_up(name, optimizer, stack, device)
        times: dict[str, list[float]] = {m: [] for m in runs}
        order = list(runs)
        for r in range(repeats):  # rotate the order so no mode always runs first
            for mode in order[r % 3 :] + order[: r % 3]:
                step = runs[mode]
                sync()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                sync()
                times[mode].append((time.perf_counter() - start) / steps)
    med = {m: statistics.median(t) for m, t in times.items()}
    n_params = sum(p.numel() for p in MODELS[name]()[0].parameters())

    def paired(mode: str) -> list[float]:  # ratios within one repeat: drifts cancel
        return sorted(a / b for a, b in zip(times[mode], times["plain"], strict=True))

    return {
        "parameters": n_params,
        "seconds_per_step": med,
        "spread": {m: [min(t), max(t)] for m, t in times.items()},
        "calibrate_over_plain": statistics.median(paired("calibrate")),
        "allocate_over_plain": statistics.median(paired("allocate")),
        "ratio_quartiles": {
            m: [statistics.quantiles(paired(m), n=4)[i] for i in (0, 2)]
            for m in ("allocate", "calibrate")
        },
    }


def profile_steps(
    name: str, steps: int = 10, top: int = 8, optimizer: str = "adam"
) -> dict[str, Any]:
    """Self CPU time per operator and step (ms) of plain / allocate / calibrate steps."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {"model": name, "optimizer": optimizer, "steps": steps, "modes": {}}
    with ExitStack() as stack:
        for mode, step in _warmed_up(name, optimizer, stack).items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step()
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total)[::-1]
            out["modes"][mode] = {
                "ms_per_step": sum(e.self_cpu_time_total for e in events) / 1e3 / steps,
                "top": {e.key: e.self_cpu_time_total / 1e3 / steps for e in events[:top]},
            }
    return out


def profile_summary(report: dict[str, Any]) -> str:
    lines = [f"where a step's time goes ({report['model']}, self CPU ms per step)"]
    for mode, r in report["modes"].items():
        lines.append(f"{mode}: {r['ms_per_step']:.3f} ms")
        lines += [f"  {ms:8.3f}  {op}" for op, ms in r["top"].items()]
    return "\n".join(lines)


def _child_rss(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "pacnet.experiments.perf", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory(name: str, steps: int, optimizer: str = "adam") -> dict[str, Any]:
    """Max RSS (MiB) of a fresh process that builds the model and runs ``steps`` steps."""
    rss = {
        mode: _child_rss(["memory", name, mode, str(steps), optimizer])["max_rss_mib"]
        for mode in ("plain", "allocate", "calibrate")
    }
    return {
        "max_rss_mib": rss,
        "calibrate_over_plain": rss["calibrate"] / rss["plain"],
        "allocate_over_plain": rss["allocate"] / rss["plain"],
    }


def checkpoint_sizes() -> dict[str, Any]:
    """pacnet file for source + target vs two dense safetensors files (ResNet-18)."""
    from safetensors.torch import save_file

    from pacnet.core.checkpoint import save

    torch.manual_seed(0)
    model = resnet18(10, 3, 1.0, "small")
    mask = prune(model, 0.8)
    tasks = Tasks(model, mask)
    tasks.add("target")
    with tempfile.TemporaryDirectory() as tmp:
        pac, dense, mask_file = (
            Path(tmp, "pac.safetensors"),
            Path(tmp, "d.safetensors"),
            Path(tmp, "mask.safetensors"),
        )
        save(pac, model, tasks)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense)
        mask.save(mask_file)
        two_dense = 2 * dense.stat().st_size
        return {
            "pacnet_bytes": pac.stat().st_size,
            "two_dense_bytes": two_dense,
            "ratio": pac.stat().st_size / two_dense,
            "mask_bits_per_weight": 8 * mask_file.stat().st_size / mask.total,
        }


def mask_time(weights: int) -> dict[str, Any]:
    return _child_rss(["mask", str(weights)])


def throughput() -> dict[str, Any]:
    from pacnet.benchmarks.ode import ODE, ODEConfig
    from pacnet.benchmarks.pde import PDE, PDEConfig

    out = {}
    for label, cls, cfg, n in (("ode", ODE, ODEConfig, 2000), ("pde", PDE, PDEConfig, 600)):
        bench = cls.__new__(cls)  # only the generator is needed, no cached data
        bench.config = cfg()
        gen = torch.Generator().manual_seed(0)
        systems = bench.draw("source", n, gen)
        start = time.perf_counter()
        _, _, steps = bench.simulate(systems)
        seconds = time.perf_counter() - start
        out[label] = {
            "trajectories": n,
            "steps": steps,
            "seconds": seconds,
            "trajectory_steps_per_s": n * steps / seconds,
        }
    return out


def run_all(quick: bool = False, optimizer: str = "adam") -> dict[str, Any]:
    repeats, steps = (5, 3) if quick else (15, 10)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "optimizer": optimizer,
        "steps": {},
        "memory": {},
    }
    for name in MODELS:
        report["steps"][name] = step_times(name, repeats, steps, optimizer)
    for name in ("wide_mlp", "resnet18"):
        report["memory"][name] = peak_memory(name, 3 if quick else 10, optimizer)
    report["checkpoint"] = checkpoint_sizes()
    report["global_mask"] = {
        str(w): mask_time(w) for w in ((10_000_000,) if quick else (10_000_000, 100_000_000))
    }
    report["data_generation"] = throughput()
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"step time ({report.get('optimizer', 'adam')}), median of paired ratios [quartiles]",
        "model          params  plain s/step  allocate/plain         calibrate/plain",
    ]
    for name, r in report["steps"].items():
        q = r["ratio_quartiles"]
        lines.append(
            f"{name:<13} {r['parameters'] / 1e6:6.1f}M  {r['seconds_per_step']['plain']:12.4f}"
            f"  {r['allocate_over_plain']:.3f} [{q['allocate'][0]:.3f}-{q['allocate'][1]:.3f}]"
            f"  {r['calibrate_over_plain']:.3f} [{q['calibrate'][0]:.3f}-{q['calibrate'][1]:.3f}]"
        )
    for name, r in report["memory"].items():
        lines.append(
            f"peak RSS {name}: allocate/plain {r['allocate_over_plain']:.3f}, "
            f"calibrate/plain {r['calibrate_over_plain']:.3f} ({r['max_rss_mib']})"
        )
    c = report["checkpoint"]
    lines.append(
        f"checkpoint: {c['ratio']:.3f} of two dense files; mask "
        f"{c['mask_bits_per_weight']:.4f} bits/weight"
    )
    for n, r in report["global_mask"].items():
        lines.append(
            f"global mask over {int(n) / 1e6:.0f}M weights: {r['seconds']:.2f} s, "
            f"peak extra memory {r['extra_over_weights']:.2f}x the weights"
        )
    for label, r in report["data_generation"].items():
        lines.append(f"{label} data: {r['trajectory_steps_per_s']:,.0f} trajectory-steps/s")
    return "\n".join(lines)


def _high_water_bytes() -> int:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it starts anew at exec,
    so a child does not inherit its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(name: str, mode: str, steps: int, optimizer: str) -> None:
    torch.manual_seed(0)
    model, x, y = MODELS[name]()
    step, context = _stepper(mode, model, x, y, optimizer)
    with context():
        for _ in range(steps):
            step()
    print(json.dumps({"max_rss_mib": _high_water_bytes() / 2**20}))


def _mask_child(weights: int) -> None:
    rows = 4096
    layers = [nn.Linear(weights // rows // 4, rows, bias=False) for _ in range(4)]
    model = nn.Sequential(*layers, nn.Linear(rows, 1))
    weight_bytes = sum(layer.weight.numel() * 4 for layer in layers)
    before = _high_water_bytes()
    start = time.perf_counter()
    mask = prune(model, 0.8)
    seconds = time.perf_counter() - start
    peak = _high_water_bytes()
    print(
        json.dumps(
            {
                "weights": mask.total,
                "seconds": seconds,
                "extra_over_weights": (peak - before) / weight_bytes,
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        _memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "mask":
        _mask_child(int(sys.argv[2]))
