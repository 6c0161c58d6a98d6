"""Summary tables from result rows: mean ± std (n) per method and target size."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


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
    return "\n".join(lines)
