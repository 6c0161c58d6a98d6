"""Summary tables from result rows: mean ± std (n) per method and target size."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pacnet.errors import check

REFERENCE = "finetune"
"""The variant paired differences are taken to (when a setting has it)."""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def protocol(results: Sequence[dict[str, Any]]) -> str:
    """One paragraph stating how the runs in ``results`` trained and chose hyperparameters."""
    if not results:
        return "No runs."
    config = results[0]["config"]
    fit = config["target_fit"]
    if fit.get("patience") is None:
        training = (
            f"fixed budget of {fit['steps']} {fit['optimizer']} steps "
            f"(lr {fit['lr']}, batch {fit['batch_size']}), the last state evaluated"
        )
    else:
        training = (
            f"early stopping on a held-out part of the target samples (patience "
            f"{fit['patience']} evaluations every {fit['eval_every']} steps, at most "
            f"{fit['steps']} {fit['optimizer']} steps, lr {fit['lr']})"
        )
    select = config.get("select")
    if select:
        choice = selection_text(results)
    else:
        choice = "hyperparameters fixed at the values in each run's config"
    return f"Protocol: {training}; {choice}."


def selection_text(results: Sequence[dict[str, Any]]) -> str:
    """How the runs in ``results`` chose their main strength: protocol and candidates."""
    from pacnet.methods.base import SEARCH_BUDGET

    select = results[0]["config"]["select"]
    mode, folds = select.get("mode", "cv"), select["folds"]
    counts: dict[str, int] = {}
    for r in results:
        grid = r["config"].get("select", {}).get("candidates")
        counts.setdefault(r["method"], SEARCH_BUDGET if grid is None else len(grid))
    if len(set(counts.values())) == 1:
        many = f"{next(iter(counts.values()))} candidates per method"
    else:
        many = "candidates: " + ", ".join(f"{m} {n}" for m, n in counts.items())
    how = (
        f"{folds}-fold cross-validation"
        if mode == "cv"
        else f"one held-out validation fold (1/{folds} of the samples)"
    )
    return (
        f"each method's main strength chosen per run by {how} on the target training "
        f"samples ({many}; the winner then trains on all of them; the test split is never used)"
    )


def summarize(results: Iterable[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Group rows by (method, target size): target and source error statistics."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["method"], r["target_size"])].append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {
            "n": len(rows),
            "target": mean_std([r["target_test"] for r in rows]),
            "source_before": mean_std([r["source_test_before"] for r in rows]),
            "source_after": mean_std([r["source_test_after"] for r in rows]),
            "trainable": rows[0]["trainable_params"],
            "stored": rows[0].get("stored_params", math.nan),
        }
    return out


def markdown(results: Sequence[dict[str, Any]], metric: str = "rmse") -> str:
    """Target error per method (rows) and target size (columns), best mean in bold, plus
    the source error before and after each method (forgetting)."""
    stats = summarize(results)
    methods = list(dict.fromkeys(r["method"] for r in results))
    sizes = sorted({r["target_size"] for r in results})
    best = {n: min(stats[(m, n)]["target"][0] for m in methods if (m, n) in stats) for n in sizes}
    lines = [
        f"Target test {metric} (mean ± std over seeds, n = seeds); lower is better, best in bold.",
        "",
        "| method | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for m in methods:
        cells = []
        for n in sizes:
            if (m, n) not in stats:
                cells.append("–")
                continue
            s = stats[(m, n)]
            text = f"{s['target'][0]:.3f} ± {s['target'][1]:.3f} ({s['n']})"
            cells.append(f"**{text}**" if s["target"][0] == best[n] else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    reference = REFERENCE if REFERENCE in methods else methods[0]
    lines += ["", *paired_markdown(results, reference, metric)]
    lines += [
        "",
        f"Source test {metric} before → after transfer (mean over all runs of the method), "
        "trainable and stored parameters:",
        "",
        "| method | source before | source after | trainable | stored for both tasks |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        before = statistics.fmean(r["source_test_before"] for r in rows)
        after = mean_std([r["source_test_after"] for r in rows])
        lines.append(
            f"| {m} | {before:.3f} | {after[0]:.3f} ± {after[1]:.3f} | "
            f"{rows[0]['trainable_params']:,} | {rows[0].get('stored_params', 0):,} |"
        )
    lines += fidelity_markdown(results, metric)
    return "\n".join(lines)


def fidelity_markdown(results: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """How much of the source survives Prune and then Allocate, for the methods that record
    it (PAC-Net): the source metric and the agreement with the unpruned model."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    found = {
        m: [r["details"]["source_fidelity"] for r in results
            if r["method"] == m and "source_fidelity" in (r.get("details") or {})]
        for m in methods
    }  # fmt: skip
    found = {m: f for m, f in found.items() if f}
    if not found:
        return []
    kinds = {f["agreement"] for fs in found.values() for f in fs}
    agreement = (
        "top-1 agreement"
        if kinds == {"top1"}
        else "the RMSE between outputs, in the model's units"
        if kinds == {"output_rmse"}
        else "top-1 agreement or the RMSE between outputs"
    )
    lines = [
        "",
        f"Source fidelity: source test {metric} after Prune alone and after Allocate, and the "
        f"agreement with the unpruned source model on its test inputs ({agreement}); mean "
        "over runs:",
        "",
        "| method | after Prune | after Allocate | agreement after Prune | after Allocate |",
        "|---|---|---|---|---|",
    ]
    for m, fs in found.items():

        def mean(key: str, fs: list[dict[str, Any]] = fs) -> float:
            return statistics.fmean(f[key] for f in fs)

        lines.append(
            f"| {m} | {mean('metric_after_prune'):.3f} | {mean('metric_after_allocate'):.3f} | "
            f"{mean('agreement_after_prune'):.3f} | {mean('agreement_after_allocate'):.3f} |"
        )
    return lines


def paired(
    results: Iterable[dict[str, Any]], reference: str
) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, size): differences to ``reference`` on the same seeds (paired draws):
    ``n`` seeds both ran, the ``mean`` difference, its standard error ``sem`` (NaN for one
    seed) and ``wins`` (seeds where the method is lower). The paired table and the report's
    paired plot both read this."""
    by_key = {(r["method"], r["target_size"], r["seed"]): r["target_test"] for r in results}
    diffs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for (method, size, seed), value in by_key.items():
        if method != reference and (reference, size, seed) in by_key:
            diffs[(method, size)].append(value - by_key[(reference, size, seed)])
    return {
        key: {
            "n": len(d),
            "mean": statistics.fmean(d),
            "sem": statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan,
            "wins": sum(v < 0 for v in d),
        }
        for key, d in diffs.items()
    }


def paired_cell(stat: dict[str, Any] | None) -> str:
    """A table cell for one :func:`paired` entry: ``mean ± s.e. (wins/n)``, ``–`` if none."""
    if stat is None:
        return "–"
    return f"{stat['mean']:+.3f} ± {stat['sem']:.3f} ({stat['wins']}/{stat['n']})"


def paired_markdown(results: Sequence[dict[str, Any]], reference: str, metric: str) -> list[str]:
    """Markdown lines: mean paired difference to ``reference`` ± standard error, and wins."""
    stats = paired(results, reference)
    if not stats:
        return []
    methods = list(dict.fromkeys(m for m, _ in stats))
    sizes = sorted({n for _, n in stats})
    lines = [
        f"Paired difference to {reference} ({metric} of method − {reference} on the same seeds; "
        "mean ± standard error, then wins/seeds; negative = better than " + reference + "):",
        "",
        "| method | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for m in methods:
        cells = [paired_cell(stats.get((m, n))) for n in sizes]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def chain_markdown(
    chains: Sequence[dict[str, Any]],
    singles: Sequence[dict[str, Any]] = (),
    metric: str = "rmse",
) -> str:
    """Several targets in one network (``pacnet run --targets``): test error of every task
    after each addition, mean ± std (n) over chains with the same number of targets, target
    columns by position (T1 = each chain's first target). ``singles``: one-target runs of the
    same setting and size; a run whose seed is a chain's target becomes that target's
    reference (one network per target) in the rows below."""
    width = len(chains[0]["targets"])
    check(all(len(c["targets"]) == width for c in chains), "chains differ in their length")
    cols = ["source", *(f"T{k + 1}" for k in range(width))]
    lines = [
        f"Several targets in one network: test {metric} of every task after each addition "
        f"(mean ± std (n) over {len(chains)} chains; T1 is each chain's first target).",
        "",
        "| after adding | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]

    def cell(values: Sequence[float]) -> str:
        if not values:
            return "–"
        mean, std = mean_std(values)
        return f"{mean:.3f} ± {std:.3f} ({len(values)})"

    for k in range(width):
        cells = [cell([c["chain"]["steps"][k]["scores"]["source"] for c in chains])]
        for j in range(width):
            scores = [c["chain"]["steps"][k]["scores"] for c in chains]
            targets = [str(c["targets"][j]) for c in chains]
            cells.append(
                cell([s[t] for s, t in zip(scores, targets, strict=True)]) if j <= k else "–"
            )
        lines.append(f"| T{k + 1} | " + " | ".join(cells) + " |")
    size = chains[0]["target_size"]
    by_method: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in singles:
        if r["target_size"] == size:
            by_method[r["method"]][r["seed"]] = r
    diffs = []
    for method, runs in by_method.items():
        found = [[runs[t] for t in c["targets"] if t in runs] for c in chains]
        if not any(found):
            continue
        source = cell([r["source_test_after"] for rows in found for r in rows])
        cells, deltas = [], []
        for j in range(width):
            pairs = [
                (c["chain"]["steps"][-1]["scores"][str(t)], runs[t]["target_test"])
                for c in chains
                if (t := c["targets"][j]) in runs
            ]
            cells.append(cell([ref for _, ref in pairs]))
            d = [ours - ref for ours, ref in pairs]
            sem = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
            deltas.append(f"{statistics.fmean(d):+.3f} ± {sem:.3f} ({len(d)})" if d else "–")
        lines.append(f"| {method}, one network per target | {source} | " + " | ".join(cells) + " |")
        diffs.append(f"| chain − {method} (paired) | – | " + " | ".join(deltas) + " |")
    exact = sum(bool(c["chain"]["earlier_tasks_bit_identical"]) for c in chains)
    lines += [
        *diffs,
        "",
        f"Earlier tasks bit-identical after every addition: {exact} of {len(chains)} chains. "
        "Reference rows: source column = source error after that method's transfer; paired "
        "rows: the chain's final error minus the reference's on the same target, mean ± "
        "standard error (n); negative = the chain is better.",
    ]
    return "\n".join(lines)
