"""``pacnet bench``: what PAC-Net's bookkeeping costs, measured side by side in one run.

* step time of an allocate step (essential entries only) and a calibrate step (redundant
  entries and own tensors, with the λ term), each divided by a plain fine-tuning step of the
  same model and batch (interleaved repeats; the median of the ratios paired within a
  repeat, and their quartiles), next to peers on the same mask: ``torch.nn.utils.prune``,
  gradient hooks and peft's LoRA (r = 8) (:mod:`~pacnet.experiments.bench.modes`); on the
  CPU the Friedman MLP, a wide MLP (>= 10 M parameters) and ResNet-18, on a GPU a
  GPT-2-small-sized transformer (bf16 autocast), a ResNet-50 (bf16, channels_last) and the
  wide MLP (:mod:`~pacnet.experiments.bench.models`); on CUDA every measurement is
  synchronised with the device;
* peak memory of each mode run alone (a fresh process's VmHWM on the CPU, the allocator's
  peak on CUDA), over plain;
* checkpoint bytes for source + target in one pacnet file / two dense safetensors files,
  and mask bits per prunable weight on disk;
* time and peak memory of a global mask over 10 M and 100 M weights;
* ODE and PDE data generation throughput (trajectory-steps per second).

``quick`` (``pacnet bench --quick``) is a smoke run of all of it: fewer repeats and steps,
on the CPU the Friedman and wide MLPs only (:data:`QUICK_CPU_MODELS`; ResNet-18's step
takes about 0.3 s there, and under load it took minutes), the 10 M-weight mask only and
fewer trajectories. No number here is a test threshold; the figures go into the notes and
the results.
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pacnet.benchmarks.resnet import resnet18
from pacnet.core.mask import prune
from pacnet.core.tasks import Tasks
from pacnet.experiments.bench.models import CPU_MODELS, GPU_MODELS, MODELS, placed
from pacnet.experiments.bench.modes import MODES, OWN_MODES, Unavailable, stepper

__all__ = [
    "CPU_MODELS",
    "GPU_MODELS",
    "MODELS",
    "MODES",
    "QUICK_CPU_MODELS",
    "default_models",
    "run_all",
    "step_times",
    "summary",
]

QUICK_CPU_MODELS = ("friedman_mlp", "wide_mlp")
"""The models ``--quick`` times on the CPU (the full bench adds ResNet-18)."""


def default_models(device: str, quick: bool = False) -> list[str]:
    """The models the bench times on ``device`` unless told which."""
    if torch.device(device).type == "cuda":
        return list(GPU_MODELS)
    return list(QUICK_CPU_MODELS if quick else CPU_MODELS)


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None


def _warmed_up(
    name: str,
    optimizer: str,
    stack: ExitStack,
    device: str = "cpu",
    modes: Sequence[str] = OWN_MODES,
    tiny: bool = False,
) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    """Step functions of ``modes`` on ``device``, each inside its context (entered on
    ``stack``) and warmed up, all before any is measured (the allocator then favours none);
    and the modes that cannot run, with why."""
    runs, unavailable = {}, {}
    for mode in modes:
        torch.manual_seed(0)
        model, x, y = placed(name, device, tiny)
        try:
            step, context = stepper(mode, name, model, x, y, optimizer)
        except Unavailable as why:
            unavailable[mode] = str(why)
            continue
        stack.enter_context(context())
        for _ in range(3):
            step()
        runs[mode] = step
    _sync(device)()
    return runs, unavailable


def step_times(
    name: str,
    repeats: int,
    steps: int,
    optimizer: str = "adam",
    device: str = "cpu",
    modes: Sequence[str] = OWN_MODES,
    tiny: bool = False,
) -> dict[str, Any]:
    """Median seconds per step of each of ``modes`` (``plain`` first) on ``device``, measured
    interleaved, and each mode's ratios to plain paired within a repeat."""
    sync = _sync(device)
    with ExitStack() as stack:
        runs, unavailable = _warmed_up(name, optimizer, stack, device, modes, tiny)
        times: dict[str, list[float]] = {m: [] for m in runs}
        order = list(runs)
        for r in range(repeats):  # rotate the order so no mode always runs first
            for mode in order[r % len(order) :] + order[: r % len(order)]:
                step = runs[mode]
                sync()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                sync()
                times[mode].append((time.perf_counter() - start) / steps)
    torch.manual_seed(0)
    model, x, _ = MODELS[name].build(tiny)

    def paired(mode: str) -> list[float]:  # ratios within one repeat: drifts cancel
        return sorted(a / b for a, b in zip(times[mode], times["plain"], strict=True))

    others = [m for m in runs if m != "plain"]
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "runs_as": MODELS[name].describe(x),
        "seconds_per_step": {m: statistics.median(t) for m, t in times.items()},
        "spread": {m: [min(t), max(t)] for m, t in times.items()},
        "over_plain": {m: statistics.median(paired(m)) for m in others},
        "ratio_quartiles": {
            m: [statistics.quantiles(paired(m), n=4)[i] for i in (0, 2)] for m in others
        },
        "unavailable": unavailable,
    }
    for mode in ("allocate", "calibrate"):  # the keys the report has always had
        if mode in report["over_plain"]:
            report[f"{mode}_over_plain"] = report["over_plain"][mode]
    return report


def profile_steps(
    name: str, steps: int = 10, top: int = 8, optimizer: str = "adam"
) -> dict[str, Any]:
    """Self CPU time per operator and step (ms) of plain / allocate / calibrate steps."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {"model": name, "optimizer": optimizer, "steps": steps, "modes": {}}
    with ExitStack() as stack:
        runs, _ = _warmed_up(name, optimizer, stack)
        for mode, step in runs.items():
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


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "pacnet.experiments.bench.costs", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mode_peak(
    name: str, mode: str, steps: int, optimizer: str, device: str, tiny: bool
) -> float | str:
    """MiB at the peak of ``steps`` steps of ``mode`` run alone (what the allocator held on
    CUDA, the process's VmHWM on the CPU), or why the mode cannot run."""
    if torch.device(device).type != "cuda":
        args = ["memory", name, mode, str(steps), optimizer, "1" if tiny else "0"]
        r = _child(args)
        return r.get("error") or r["max_rss_mib"]
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        torch.manual_seed(0)
        model, x, y = placed(name, device, tiny)
        step, context = stepper(mode, name, model, x, y, optimizer)
        with context():
            for _ in range(steps):
                step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    except Unavailable as why:
        return str(why)


def peak_memory(
    name: str,
    steps: int,
    optimizer: str = "adam",
    device: str = "cpu",
    modes: Sequence[str] = OWN_MODES,
    tiny: bool = False,
) -> dict[str, Any]:
    """Peak memory (MiB) of each of ``modes`` run alone, and each over plain's."""
    peaks = {m: _mode_peak(name, m, steps, optimizer, device, tiny) for m in modes}
    plain = peaks["plain"]
    measured = {m: v for m, v in peaks.items() if isinstance(v, float)}
    return {
        "peak_mib": measured,
        "over_plain": {m: v / plain for m, v in measured.items() if m != "plain"},
        "unavailable": {m: v for m, v in peaks.items() if isinstance(v, str)},
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
    return _child(["mask", str(weights)])


def throughput(quick: bool = False) -> dict[str, Any]:
    from pacnet.benchmarks.ode import ODE, ODEConfig
    from pacnet.benchmarks.pde import PDE, PDEConfig

    out = {}
    sizes = (500, 150) if quick else (2000, 600)
    for (label, cls, cfg), n in zip(
        (("ode", ODE, ODEConfig), ("pde", PDE, PDEConfig)), sizes, strict=True
    ):
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


def run_all(
    quick: bool = False,
    optimizer: str = "adam",
    device: str = "cpu",
    models: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    tiny: bool = False,
) -> dict[str, Any]:
    """The whole bench on ``device``: step times and peak memory of ``modes`` on ``models``
    (by default :func:`default_models`), then, on the CPU, checkpoint sizes, the global
    mask's cost and data generation. ``tiny``: every model in its tiny form (for tests)."""
    cuda = torch.device(device).type == "cuda"
    models = list(models or default_models(device, quick))
    repeats, steps = (5, 3) if quick else (15, 10)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else "CPU",
        "optimizer": optimizer,
        "steps": {},
        "memory": {},
    }
    for name in models:
        report["steps"][name] = step_times(name, repeats, steps, optimizer, device, modes, tiny)
    for name in [m for m in models if m != "friedman_mlp"] or models:
        report["memory"][name] = peak_memory(
            name, 3 if quick else 10, optimizer, device, modes, tiny
        )
    if cuda or tiny:
        return report
    report["checkpoint"] = checkpoint_sizes()
    report["global_mask"] = {
        str(w): mask_time(w) for w in ((10_000_000,) if quick else (10_000_000, 100_000_000))
    }
    report["data_generation"] = throughput(quick)
    return report


def summary(report: dict[str, Any]) -> str:
    """The report in a few lines: per model, each mode's step time over plain (median of
    paired ratios and quartiles), then peak memory over plain, and the rest."""
    lines = [
        f"{report.get('device_name', 'CPU')} ({report.get('device', 'cpu')}), torch "
        f"{report['torch']}, optimizer {report.get('optimizer', 'adam')}",
        "step time over plain: median of paired ratios [quartiles]",
    ]
    for name, r in report["steps"].items():
        lines.append(
            f"{name} ({r['parameters']:,} parameters, {r.get('runs_as', '')}): plain "
            f"{r['seconds_per_step']['plain'] * 1e3:.3f} ms/step"
        )
        for mode, ratio in r["over_plain"].items():
            q = r["ratio_quartiles"][mode]
            lines.append(f"  {mode:<12} {ratio:.3f} [{q[0]:.3f}-{q[1]:.3f}]")
        for mode, why in r.get("unavailable", {}).items():
            lines.append(f"  {mode:<12} not run: {why}")
    for name, r in report["memory"].items():
        ratios = ", ".join(f"{m} {v:.3f}" for m, v in r["over_plain"].items())
        lines.append(f"peak memory {name} over plain ({r['peak_mib']['plain']:.0f} MiB): {ratios}")
    if "checkpoint" in report:
        c = report["checkpoint"]
        lines.append(
            f"checkpoint: {c['ratio']:.3f} of two dense files; mask "
            f"{c['mask_bits_per_weight']:.4f} bits/weight"
        )
    for n, r in report.get("global_mask", {}).items():
        lines.append(
            f"global mask over {int(n) / 1e6:.0f}M weights: {r['seconds']:.2f} s, "
            f"peak extra memory {r['extra_over_weights']:.2f}x the weights"
        )
    for label, r in report.get("data_generation", {}).items():
        lines.append(f"{label} data: {r['trajectory_steps_per_s']:,.0f} trajectory-steps/s")
    return "\n".join(lines)


def _high_water_bytes() -> int:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it starts anew at exec,
    so a child does not inherit its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(name: str, mode: str, steps: int, optimizer: str, tiny: bool) -> None:
    torch.manual_seed(0)
    model, x, y = placed(name, "cpu", tiny)
    try:
        step, context = stepper(mode, name, model, x, y, optimizer)
    except Unavailable as why:
        print(json.dumps({"error": str(why)}))
        return
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
        _memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1")
    elif sys.argv[1] == "mask":
        _mask_child(int(sys.argv[2]))
