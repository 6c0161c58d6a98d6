"""Reports generated only from stored rows: Markdown tables and PNG plots, never typed in.

Rows are grouped into *settings* (benchmark and every benchmark setting that differs from
its default, the selection protocol and the device) and, within a setting, into *variants*
(method and its non-default hyperparameters). Per setting the report has the protocol
line, mean ± std (n) of the target metric per variant and target size (best in bold), the
paired difference to fine-tuning, the source error before and after (forgetting) with the
trainable and stored parameter counts, and three plots: target error against target size
(log x, one line per variant, ± std), source retention bars and, when the setting has
fine-tuning runs, the paired difference to fine-tuning against target size (method −
fine-tuning on the seeds both ran, mean ± standard error, one line per other variant, a
line at 0; the values of the paired table; a variant far beyond the rest is named above
the axis with its range instead of drawn). Runs that served several
targets from one network (``pacnet run --targets``) get a table of their own per setting:
every task's error after each addition, with one-target runs of the same targets beside it.
Runs saved with ``pacnet run --save`` are listed at the end with where their network is.
Rows of several benchmarks get a summary across them (:mod:`pacnet.experiments.report.summary`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pacnet.experiments.report.summary import summary
from pacnet.experiments.report.table import (
    REFERENCE,
    chain_markdown,
    markdown,
    paired,
    paired_cell,
    protocol,
    summarize,
)
from pacnet.experiments.run.environment import DETERMINISM_NOTE
from pacnet.io import write_bytes_atomic

PAPER_NOTE = (
    "Paper numbers: the PAC-Net paper's numeric tables are not available to this project "
    "(see docs/paper.md), so no paper column is shown; its qualitative claim is that PAC-Net "
    "beats fine-tuning, "
    "L2-SP and DELTA by a large margin, most of all with few target samples, while keeping "
    "the source task intact."
)


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    if "identity" in row:
        return row["identity"]
    config = row["config"]  # rows written before identities were stored
    return {
        "settings": {"quick": config.get("quick")},
        "params": {},
        "select": config.get("select"),
    }


def setting_key(row: dict[str, Any]) -> str:
    """What separates incomparable groups of rows."""
    ident = _identity(row)
    parts = {k: ident.get(k) for k in ("settings", "select", "device", "amp") if ident.get(k)}
    if "select" in parts:  # each method has its own candidates; the protocol is shared
        parts["select"] = {k: v for k, v in parts["select"].items() if k != "candidates"}
    return json.dumps({"benchmark": row["benchmark"], **parts}, sort_keys=True)


EQUAL = " [equal source compute]"


def variant(row: dict[str, Any]) -> str:
    """Method name plus its non-default hyperparameters, e.g. ``pacnet (lam=0.1)``, and
    ``[equal source compute]`` for a baseline started from the longer-trained source."""
    ident = _identity(row)
    params = ident.get("params") or {}
    name = row["method"]
    if params:
        name += f" ({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})"
    return name + (EQUAL if ident.get("source_compute") == "equal" else "")


def _describe(key: str) -> str:
    data = json.loads(key)
    extra = {k: v for k, v in data.items() if k != "benchmark"}
    return f"{data['benchmark']}" + (f" — {json.dumps(extra, sort_keys=True)}" if extra else "")


def _plots(rows: Sequence[dict[str, Any]], metric: str, stem: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    variants = list(dict.fromkeys(r["method"] for r in rows))
    names = []
    series = {}
    for v in variants:
        sizes = sorted(n for (m, n) in stats if m == v)
        series[v] = (
            sizes,
            [stats[(v, n)]["target"][0] for n in sizes],
            [stats[(v, n)]["target"][1] for n in sizes],
        )
    path = stem.with_name(stem.name + "-target.png")
    names.append(
        _errorbars(series, "target training size", f"target test {metric} (mean ± std)", path)
    )

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    before = [_mean(rows, v, "source_test_before") for v in variants]
    after = [_mean(rows, v, "source_test_after") for v in variants]
    xs = range(len(variants))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before transfer")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after transfer")
    ax.set_xticks(list(xs), variants, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"source test {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = stem.with_name(stem.name + "-source.png")
    write_bytes_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    names.append(path.name)

    if REFERENCE in variants and (diffs := paired(rows, REFERENCE)):
        series = {}
        for v in variants:
            sizes = sorted(n for (m, n) in diffs if m == v)
            if sizes:  # the standard error is NaN (no bar) for one seed
                means = [diffs[(v, n)]["mean"] for n in sizes]
                series[v] = (sizes, means, [diffs[(v, n)]["sem"] for n in sizes])
        path = stem.with_name(stem.name + "-paired.png")
        names.append(_errorbars(series, "target training size", _gap_label(metric), path, True))
    return names


def _mean(rows: Sequence[dict[str, Any]], method: str, key: str) -> float:
    return statistics.fmean(r[key] for r in rows if r["method"] == method)


def _section(title: str, rows: Sequence[dict[str, Any]], noun: str) -> list[str]:
    """A setting's heading, its protocol, how long its runs took and where they ran."""
    seconds = sum(r["seconds"] for r in rows)
    return [
        "",
        title,
        "",
        protocol(rows),
        f"{len(rows)} {noun}; their run times add up to {seconds / 60:.1f} minutes"
        f"{_span(rows)}. {_machines(rows)}{_engines(rows)}",
        "",
    ]


def _engines(rows: Sequence[dict[str, Any]]) -> str:
    """Which methods' runs trained stacked (the batched engine) and which one at a time
    (rows from before the engines existed say nothing)."""
    by: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if "engine" in row:
            by[row["engine"]].add(row["method"])
    if not by.get("batched"):
        return ""
    text = f" Batched engine (runs stacked as one model): {', '.join(sorted(by['batched']))}"
    alone = sorted(by.get("sequential", set()) - by["batched"])
    if alone:
        text += f"; one run at a time (no stacked layout): {', '.join(alone)}"
    return text + "."


PAUSE = 60.0
"""Seconds without a run in flight that count as a pause (a stopped and resumed sweep),
not as the time between one run and the next."""


def _span(rows: Sequence[dict[str, Any]]) -> str:
    """The wall time from the first run's start to the last run's end, when known, and the
    part of it with runs in flight when the runs paused (a sweep stopped and resumed)."""
    import datetime

    try:
        ends = [datetime.datetime.fromisoformat(r["finished"]).timestamp() for r in rows]
    except (KeyError, TypeError, ValueError):
        return ""
    wall, busy = wall_time([(e - r["seconds"], e) for e, r in zip(ends, rows, strict=True)])
    text = f", {wall / 60:.1f} minutes of wall time from the first start to the last finish"
    if wall - busy >= PAUSE:
        text += (
            f", {busy / 60:.1f} of them with runs in flight (pauses of more than"
            f" {PAUSE:.0f} s left out)"
        )
    return text


def wall_time(intervals: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Seconds from the first start to the last end of ``(start, end)`` intervals, and the
    seconds covered by them once gaps shorter than :data:`PAUSE` are bridged."""
    if not intervals:
        return 0.0, 0.0
    ordered = sorted(intervals)
    busy, (start, end) = 0.0, ordered[0]
    for s, e in ordered[1:]:
        if s - end > PAUSE:
            busy += end - start
            start = s
        end = max(end, e)
    busy += end - start
    return max(e for _, e in ordered) - ordered[0][0], busy


def _machines(rows: Sequence[dict[str, Any]]) -> str:
    """Where the runs ran: CPU model and cores (or platform), device."""
    seen = []
    for r in rows:
        v = r.get("versions", {})
        where = v.get("machine") or v.get("platform", "unknown machine")
        device = (r.get("identity") or {}).get("device", "cpu")
        seen.append(f"{where}, {device}, torch {v.get('torch', '?')}")
    return "Ran on: " + "; ".join(dict.fromkeys(seen)) + "."


def against_baselines(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """Markdown lines: PAC-Net − each other variant on the same seeds, when some baselines
    ran under equal source compute (does PAC-Net's lead survive the longer-trained start?)."""
    variants = list(dict.fromkeys(r["method"] for r in rows))
    ours = [v for v in variants if v.split(" ")[0] == "pacnet"]
    if not ours or not any(v.endswith(EQUAL) for v in variants):
        return []
    sizes = sorted({r["target_size"] for r in rows})
    lines = [
        f"PAC-Net against each baseline under standard and equal source compute ({metric} of "
        "PAC-Net − baseline on the same seeds, mean ± standard error, then PAC-Net's "
        "wins/seeds; negative = PAC-Net better):",
        "",
        "| PAC-Net variant − baseline | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for mine in ours:
        for other in variants:
            if other in ours:
                continue
            stats = paired([r for r in rows if r["method"] in (mine, other)], other)
            cells = [paired_cell(stats.get((mine, n))) for n in sizes]
            lines.append(f"| {mine} − {other} | " + " | ".join(cells) + " |")
    return lines


def _setting_value(row: dict[str, Any], name: str) -> Any:
    return row["config"]["benchmark"].get(name)


def across_section(rows: Sequence[dict[str, Any]], name: str, out: Path, index: int) -> list[str]:
    """How the paired difference to fine-tuning changes with benchmark setting ``name``
    (e.g. the network's width): a table (rows: variant and target size, columns: the
    setting's values) and a plot of the gap ± standard error against the setting."""
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        ident = json.loads(setting_key(row))
        ident.get("settings", {}).pop(name, None)
        if not ident.get("settings", True):
            del ident["settings"]
        families[json.dumps(ident, sort_keys=True)].append(row)
    lines: list[str] = []
    for number, (key, family) in enumerate(sorted(families.items()), start=index):
        values = sorted({_setting_value(r, name) for r in family})
        if len(values) < 2:
            continue
        gaps: dict[tuple[str, int], dict[Any, dict[str, Any]]] = defaultdict(dict)
        for value in values:
            part = [r for r in family if _setting_value(r, name) == value]
            for (method, size), st in paired(part, REFERENCE).items():
                gaps[(method, size)][value] = st
        if not gaps:
            continue
        metric = family[0]["metric"]
        lines += [
            "",
            f"## {number}. {_describe(key)} — paired difference to {REFERENCE} against {name}",
            "",
            f"{metric} of method − {REFERENCE} on the same seeds, mean ± standard error "
            f"(wins/seeds), per {name}; negative = better than {REFERENCE}.",
            "",
            "| method | N | " + " | ".join(f"{name}={v}" for v in values) + " |",
            "|---|---|" + "---|" * len(values),
        ]
        for (method, size), by_value in sorted(gaps.items()):
            cells = [paired_cell(by_value.get(v)) for v in values]
            lines.append(f"| {method} | {size} | " + " | ".join(cells) + " |")
        plot = _across_plot(gaps, name, metric, out / f"across{number}-{name}.png")
        lines += ["", f"![{plot}]({plot})"]
    return lines


def _across_plot(
    gaps: dict[tuple[str, int], dict[Any, dict[str, Any]]], name: str, metric: str, path: Path
) -> str:
    series = {}
    for (method, size), by_value in sorted(gaps.items()):
        xs = sorted(by_value)
        means = [by_value[x]["mean"] for x in xs]
        series[f"{method}, N={size}"] = (xs, means, [by_value[x]["sem"] for x in xs])
    log = all(isinstance(x, int | float) and x > 0 for g in gaps.values() for x in g)
    return _errorbars(
        series, name, _gap_label(metric), path, True, 2 if log else None, _across_style
    )


def _gap_label(metric: str) -> str:
    return f"target test {metric}: method − {REFERENCE}\n(same seeds, mean ± s.e.)"


def _errorbars(
    series: dict[str, tuple[list, list[float], list[float]]],
    xlabel: str,
    ylabel: str,
    path: Path,
    zero: bool = False,
    log_base: int | None = 10,
    style: Callable[[str], tuple[str | None, bool, bool]] | None = None,
) -> str:
    """One line with error bars per series (label -> xs, means, errors), a line at 0 if
    ``zero``, a log x axis unless ``log_base`` is None; written to ``path``, its name
    returned. ``style(label)`` gives a series' colour key (None: black), whether it is
    dashed with open markers and whether it is drawn thicker (default
    :func:`method_style`). On a log axis the series are spread a little sideways so that
    their error bars do not hide each other; with ``zero`` (a paired plot) a series far
    beyond the others (:func:`off_scale`), and the series of its colour, are left out and
    named above the axis with their ranges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    styles = {label: (style or method_style)(label) for label in series}
    if sum(key is None for key, _, _ in styles.values()) > 1:  # several black: colour them
        styles = {k: (k if key is None else key, d, t) for k, (key, d, t) in styles.items()}
    left_out = off_scale(series, lambda k: styles[k][0] or k) if zero else {}
    shown = {k: v for k, v in series.items() if k not in left_out}
    keys = list(dict.fromkeys(k for k, _, _ in styles.values() if k is not None))
    palette = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20").colors
    order = {k: i for i, k in enumerate([None, *keys])}
    shown = dict(sorted(shown.items(), key=lambda kv: (order[styles[kv[0]][0]], kv[0])))
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    for i, (label, (xs, means, errors)) in enumerate(shown.items()):
        key, dashed, thick = styles[label]
        colour = "black" if key is None else palette[keys.index(key) % len(palette)]
        if log_base and len(shown) > 1:
            shift = log_base ** ((i - (len(shown) - 1) / 2) * 0.05 / len(shown))
            xs = [x * shift for x in xs]
        ax.errorbar(
            xs,
            means,
            yerr=errors,
            marker="o",
            capsize=3,
            label=label,
            color=colour,
            linestyle="--" if dashed else "-",
            markerfacecolor="white" if dashed else colour,
            linewidth=2.2 if thick else 1.5,
            zorder=3 if thick else 2,
        )
    if zero:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if log_base:
        ax.set_xscale("log", base=log_base)
        ticks = sorted({x for xs, _, _ in series.values() for x in xs})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if left_out:
        note = "; ".join(f"{k}: {lo:+.3g} to {hi:+.3g}" for k, (lo, hi) in left_out.items())
        ax.set_title(f"off scale, not drawn: {note}", fontsize=8)
    fig.tight_layout()
    write_bytes_atomic(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )
    plt.close(fig)
    return path.name


def method_style(label: str) -> tuple[str | None, bool, bool]:
    """A method's colour for its series; its equal-source-compute variant dashed in the
    same colour; PAC-Net black and thicker."""
    base = label.removesuffix(EQUAL)
    ours = base.startswith("pacnet")
    return (None if ours else base), label.endswith(EQUAL), ours


def _across_style(label: str) -> tuple[str | None, bool, bool]:
    """One colour per target size; PAC-Net solid and thicker, a baseline dashed."""
    method, size = label.rsplit(", N=", 1)
    ours = method.startswith("pacnet")
    return f"N={size}", not ours, ours


def off_scale(
    series: dict[str, tuple[list, list[float], list[float]]],
    group: Callable[[str], str] = str,
    factor: float = 3.0,
) -> dict[str, tuple[float, float]]:
    """The series whose largest absolute mean exceeds ``factor`` times the median of the
    series' largest absolute means (with at least three series), and every other series
    of the same ``group`` (a method's variants go together), with their range of means:
    one far-off line (training from scratch, say) would otherwise flatten every other
    line of a paired plot to its zero line."""
    extent = {k: max(abs(m) for m in means) for k, (_, means, _) in series.items() if means}
    if len(extent) < 3:
        return {}
    limit = factor * statistics.median(extent.values())
    if limit == 0:  # most series are zero everywhere: nothing to flatten
        return {}
    far = {group(k) for k, e in extent.items() if e > limit}
    return {k: (min(series[k][1]), max(series[k][1])) for k in extent if group(k) in far}


def saved_networks(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: where each run saved with ``pacnet run --save`` keeps its network."""
    saved = [r for r in rows if isinstance(r.get("network"), dict)]
    if not saved:
        return []
    lines = [
        "",
        "## Saved networks",
        "",
        "Runs made with `pacnet run --save` (read any of them with `pacnet inspect FILE`):",
        "",
        "| benchmark | method | seed | N | tasks | network |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(saved, key=lambda r: (r["benchmark"], r["method"], r["seed"])):
        net = r["network"]
        where = net.get("path") or f"{net['file']} beside the run's result.json"
        targets = f" (targets {', '.join(map(str, r['targets']))})" if r.get("targets") else ""
        lines.append(
            f"| {r['benchmark']} | {variant(r)}{targets} | {r['seed']} | {r['target_size']} | "
            f"{', '.join(net['tasks'])} | `{where}` |"
        )
    return lines


def report(rows: Sequence[dict[str, Any]], out: str | Path, across: Sequence[str] = ()) -> Path:
    """Write ``out/report.md`` and its plots from ``rows``; returns the report's path.

    ``across``: benchmark settings (e.g. ``width``) to show the paired difference to
    fine-tuning against, over settings that differ only in that one."""
    out = Path(out)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    chains: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if "chain" in row:  # several targets in one network: a table of its own
            chains[(setting_key(row), row["target_size"], len(row["targets"]))].append(row)
        else:
            groups[setting_key(row)].append({**row, "method": variant(row)})
    lines = [
        "# pacnet report",
        "",
        f"Generated from {len(rows)} stored runs.",
        "",
        PAPER_NOTE,
        "",
        DETERMINISM_NOTE,
    ]
    for index, (key, group) in enumerate(sorted(groups.items()), start=1):
        metric = group[0]["metric"]
        lines += _section(f"## {index}. {_describe(key)}", group, "runs")
        lines.append(markdown(group, metric))
        if extra := against_baselines(group, metric):
            lines += ["", *extra]
        plots = _plots(group, metric, out / f"setting{index}")
        lines += [""] + [f"![{name}]({name})" for name in plots]
    start = len(groups) + 1
    for index, ((key, size, width), chain) in enumerate(sorted(chains.items()), start=start):
        title = f"## {index}. {_describe(key)} — {width} targets in one network, N={size} each"
        lines += _section(title, chain, "chains")
        lines.append(chain_markdown(chain, groups.get(key, []), chain[0]["metric"]))
    singles = [r for group in groups.values() for r in group]
    if len({r["benchmark"] for r in singles}) > 1:
        lines += ["", *summary(singles)]
    for name in across:
        lines += across_section(singles, name, out, len(groups) + len(chains) + 1)
    lines += saved_networks(rows)
    path = out / "report.md"
    text = "\n".join(lines) + "\n"
    write_bytes_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
