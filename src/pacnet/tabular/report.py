"""The transfer report: ``report.md`` and ``report.png``, written from the card alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacnet.benchmarks.mlp import describe_spec
from pacnet.io import write_bytes_atomic

REPORT_FILE = "report.md"
PLOT_FILE = "report.png"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "(fixed)"


def _best(methods: list[dict[str, Any]]) -> dict[str, Any]:
    return min(methods, key=lambda m: m["cv"])


def write_report(card: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/report.md`` and ``out/report.png`` from ``card``; returns the report."""
    out = Path(out)
    _plot(card, out / PLOT_FILE)
    text = "\n".join(report_lines(card)) + "\n"
    path = out / REPORT_FILE
    write_bytes_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def report_lines(card: dict[str, Any]) -> list[str]:
    """The Markdown report of a transfer card, as lines."""
    metric, metrics, methods = card["metric"], card["metrics"], card["methods"]
    best = _best(methods)
    ours = next(m for m in methods if m["method"] == "pacnet")
    before = metrics["source"]["before"][metric]
    as_is = metrics["target"]["source_model_as_is"][metric]
    lines = _header_lines(card, before)
    for m in sorted(methods, key=lambda m: m["cv"]):
        name, cv = m["method"], _num(m["cv"])
        if m is best:
            name, cv = f"**{name}**", f"**{cv}**"
        lines.append(
            f"| {name} | {cv} | {_num(m['cv_std'])} | {_params(m['chosen'])} | "
            f"{len(m['candidates'])} | {_num(m['source_after'])} | {m['trainable']:,} | "
            f"{m['seconds']:.1f} s |"
        )
    lines += [
        f"| source model as is (no transfer) | {_num(as_is)} (all target rows) | – | – | – | "
        f"{_num(before)} | 0 | – |",
        "",
        _verdict(best, ours, as_is, metric),
        "",
        f"![CV error and source error per method]({PLOT_FILE})",
        "",
        f"## The saved network ({_kept_name(card)})",
        "",
        *_network_lines(card, ours, before, metrics["source"]["rows_held_out"]),
        "",
        *_reading_lines(card),
    ]
    return lines


def _header_lines(card: dict[str, Any], before: float) -> list[str]:
    """The report's title, the data and the model, and the head of the methods table."""
    data, metric, outputs = card["data"], card["metric"], card["outputs"]
    source, target = data["source"], data["target"]
    origin = card["training"]["source"]
    chosen = card["training"].get("source_steps") or {}  # absent from older cards
    if "checkpoint" in origin:
        made = f"the source model is {origin['checkpoint']}"
    else:
        run = origin["trained"]
        made = f"the source model was trained here ({run['steps']} steps"
        if chosen.get("chosen_by") == "cross-validation":
            made += (
                f" on all {source['rows_train']:,} training rows: {chosen['folds']}-fold "
                f"cross-validation on those rows chose the number, as {chosen['why']}; "
                "Allocate takes as many"
            )
        elif run.get("best_step") is not None and card["training"]["settings"]["source_patience"]:
            made += f", kept as at step {run['best_step']}, its best on held-out source rows"
        made += ")"
    if chosen.get("note"):
        made += f"; {chosen['note']}"
    if len(outputs) == 1:
        unit = f"{metric.upper()} of {outputs[0]} in its own units"
    else:
        unit = (
            "RMSE over the standardised outputs (each output's error divided by its standard "
            "deviation in the source table); per output in its own units further down"
        )
    folds = card["selection"]["folds"]
    return [
        f"# PAC-Net transfer: {source_name(card)} → {Path(target['file']).name}",
        "",
        f"Inputs ({len(card['inputs'])}): {', '.join(card['inputs'])}. "
        f"Outputs ({len(outputs)}): {', '.join(outputs)}.",
        f"Source: {source['rows']:,} rows ({source['rows_train']:,} train the source model"
        + (
            f", {source['rows_early_stopping']:,} stop its training early"
            if source.get("rows_early_stopping")
            else ""
        )
        + f", {source['rows_held_out']:,} are held out to measure the source error); target: "
        f"{target['rows']:,} rows. Model: {describe_spec(card['model'])}; {made}.",
        "",
        f"Error: {unit}; lower is better.",
        "",
        "## Which method suits this data",
        "",
        f"Every method was cross-validated on the {target['rows']} target rows the same way: "
        f"{folds} folds (target row i is held out in fold i mod {folds}); each candidate "
        "setting trains on the other folds and is scored on the held-out one. Shown: the best "
        "candidate's mean over the folds ± the spread (standard deviation) over the folds, "
        "then that candidate trained on every target row: its error on the held-out source "
        f"rows (before any transfer: {_num(before)}).",
        "",
        f"| method | CV {metric} | ± over folds | chosen | candidates | source {metric} after "
        "| trainable parameters | time |",
        "|---|---|---|---|---|---|---|---|",
    ]


def _reading_lines(card: dict[str, Any]) -> list[str]:
    """How to read the report (and which source columns were constant)."""
    lines = [
        "## How to read this",
        "",
        "* **CV error** estimates each method's error on new target rows: every score comes "
        "from rows the model did not train on. With tens of rows it is noisy: a difference "
        "smaller than the spread over the folds is not evidence that one method is better.",
        "* **Source model as is** applies the source model to the target rows without any "
        "transfer. A method clearly below it has learned the target's difference; if none is, "
        "the target rows do not differ enough from the source (or are too few) for transfer "
        "to help.",
        "* **Source error after** is each method's error on the held-out source rows once it "
        "has trained on the target: how much of the source task it kept. PAC-Net's source "
        "task is the source model after Allocate (its essential weights retrained on the "
        "source), returned exactly; fine-tuning, L2-SP, DELTA and BSS change the one network "
        "and forget; a linear probe, LoRA and training from scratch leave the source model "
        "itself untouched (at the cost of a second set of weights).",
        "* **In-sample** errors are measured on the rows the model trained on and are "
        "optimistic; do not compare them with CV errors.",
    ]
    constant = card["scaling"]["inputs"]["constant"] + card["scaling"]["outputs"]["constant"]
    if constant:
        lines.append(
            f"* Constant in the source table: {', '.join(constant)}. The source model learned "
            "nothing from such a column; it is centred and scaled by its spread in the target "
            "table (or by 1)."
        )
    return lines


def _verdict(best: dict[str, Any], ours: dict[str, Any], as_is: float, metric: str) -> str:
    gap = ours["cv"] - best["cv"]
    if best is ours:
        text = f"PAC-Net has the lowest CV {metric} ({_num(ours['cv'])})."
    elif gap <= max(ours["cv_std"], best["cv_std"]):
        text = (
            f"{best['method']} has the lowest CV {metric} ({_num(best['cv'])}), "
            f"{_num(gap)} below PAC-Net's, within the spread over the folds: no clear winner."
        )
    else:
        text = (
            f"{best['method']} has the lowest CV {metric} ({_num(best['cv'])}), "
            f"{_num(gap)} below PAC-Net's ({_num(ours['cv'])}), more than the spread over the "
            "folds: for this data it predicts the target better, though only PAC-Net also keeps "
            "the source model exactly in the same network."
        )
    if best["cv"] >= as_is:
        text += (
            f" No method beats the source model as is ({_num(as_is)}): transfer does not "
            "help on these rows."
        )
    return text


def _network_lines(card: dict[str, Any], ours: dict[str, Any], before: float, held: int) -> list:
    metric, hp, metrics = card["metric"], card["hyperparameters"], card["metrics"]
    chosen = card["chosen_by"]
    params = card["parameters"]
    after = metrics["source"]["after"][metric]
    target = metrics["target"]
    kept = card.get("method", "pacnet")
    if kept != "pacnet":
        return [
            f"* Kept: {kept}, {card['method_chosen']}; settings "
            f"{', '.join(f'{k} {v}' for k, v in hp.items()) or 'none'}.",
            f"* Source task: {metric} {_num(before)} on the {held:,} held-out source rows; "
            f"{kept} changed a copy of the source model, so the source network is stored "
            "beside the target's (`source.safetensors`) and `pacnet predict --task source` "
            "answers with it, bit for bit.",
            f"* Target task: CV {metric} {_num(target['cv'])} ± {_num(target['cv_std'])} (the "
            f"estimate for new rows); {_num(target['in_sample'][metric])} on the target rows it "
            "trained on (in-sample).",
        ]
    lines = [
        f"* Pruning ratio {hp['ratio']} ({chosen['ratio']}): {params['essential']:,} "
        f"essential weights keep the source task, {params['redundant']:,} redundant ones were "
        f"trained on the target; λ = {hp['lam']} ({chosen['lam']}) pulls them toward 0.",
        f"* Source task: {metric} {_num(before)} before transfer, {_num(after)} after, on the "
        f"{held:,} held-out source rows. `pacnet predict --task source` answers with this "
        "model, bit for bit.",
        f"* Target task: CV {metric} {_num(target['cv'])} ± {_num(target['cv_std'])} (the "
        f"estimate for new rows); {_num(target['in_sample'][metric])} on the target rows it "
        "trained on (in-sample).",
    ]
    outputs = card["outputs"]
    if len(outputs) > 1:
        lines += [
            "",
            "Per output, in its own units (RMSE):",
            "",
            "| output | source before | source after | target in-sample | source model on "
            "target rows |",
            "|---|---|---|---|---|",
        ]
        src, tgt = metrics["source"], metrics["target"]
        for name in outputs:
            key = f"rmse[{name}]"
            lines.append(
                f"| {name} | {_num(src['before'][key])} | {_num(src['after'][key])} | "
                f"{_num(tgt['in_sample'][key])} | {_num(tgt['source_model_as_is'][key])} |"
            )
    return lines


def _plot(card: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = card["metric"]
    methods = sorted(card["methods"], key=lambda m: m["cv"])
    names = [m["method"] for m in methods]
    ys = list(range(len(methods)))
    as_is = card["metrics"]["target"]["source_model_as_is"][metric]
    before = card["metrics"]["source"]["before"][metric]
    height = 1.6 + 0.4 * len(methods)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, height), sharey=True)
    colours = ["tab:green" if m["method"] == "pacnet" else "tab:blue" for m in methods]
    left.barh(ys, [m["cv"] for m in methods], xerr=[m["cv_std"] for m in methods],
              color=colours, capsize=3)  # fmt: skip
    left.axvline(as_is, color="black", linestyle="--", linewidth=1, label="source model as is")
    left.set_yticks(ys, names)
    left.invert_yaxis()
    left.set_xlabel(f"CV {metric} on the target rows (± over folds)")
    left.legend(fontsize=8, loc="lower right")
    right.barh(ys, [m["source_after"] for m in methods], color=colours)
    right.axvline(before, color="black", linestyle="--", linewidth=1, label="before transfer")
    right.set_xlabel(f"source {metric} after transfer (held-out source rows)")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    write_bytes_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def card_lines(card: dict[str, Any]) -> list[str]:
    """What ``pacnet inspect`` prints of a transfer card: a few lines."""
    metric, data, metrics = card["metric"], card["data"], card["metrics"]
    hp, chosen = card["hyperparameters"], card["chosen_by"]
    origin = card["training"]["source"]
    made = (
        f"from {origin['checkpoint']}" if "checkpoint" in origin else "trained on the source table"
    )
    steps_by = card["training"].get("source_steps") or {}  # absent from older cards
    if steps_by.get("chosen_by") == "cross-validation":
        made += (
            f" for {steps_by['steps']} steps, chosen by {steps_by['folds']}-fold "
            f"cross-validation on {steps_by['rows']:,} rows"
        )
    scaling = {"inputs": card["scaling"]["inputs"], "outputs": card["scaling"]["outputs"]}
    constant = scaling["inputs"]["constant"] + scaling["outputs"]["constant"]
    cv = ", ".join(f"{m['method']} {m['cv']:.4g} ± {m['cv_std']:.4g}" for m in card["methods"])
    source = metrics["source"]
    target = metrics["target"]
    versions = card.get("versions", {})
    lines = [
        f"card: pacnet transfer of {source_name(card)} ({data['source']['rows']:,} rows) "
        f"-> {data['target']['file']} ({data['target']['rows']:,} rows), {card['created']}",
        f"  inputs ({len(card['inputs'])}): {', '.join(card['inputs'])}",
        f"  outputs ({len(card['outputs'])}): {', '.join(card['outputs'])}",
        f"  model: {describe_spec(card['model'])}; source model {made}",
        (
            f"  PAC-Net: ratio {hp['ratio']} ({chosen['ratio']}), lam {hp['lam']} ({chosen['lam']})"
            if card.get("method", "pacnet") == "pacnet"
            else f"  kept: {card['method']}, {card['method_chosen']}"
        ),
        f"  CV {metric} on the target rows ({card['selection']['folds']} folds): {cv}",
        f"  source {metric} on {source['rows_held_out']:,} held-out rows: "
        f"{source['before'][metric]:.4g} before, {source['after'][metric]:.4g} after",
        f"  target {metric}: {target['in_sample'][metric]:.4g} in-sample; the source model as "
        f"is: {target['source_model_as_is'][metric]:.4g}",
    ]
    for kind in ("inputs", "outputs"):
        s = scaling[kind]
        stats = zip(s["names"], s["mean"], s["scale"], strict=True)
        pairs = ", ".join(f"{n} {m:.4g}/{sc:.4g}" for n, m, sc in stats)
        if len(s["names"]) > 8:
            pairs = ", ".join(pairs.split(", ")[:8]) + f", … ({len(s['names']) - 8} more)"
        lines.append(f"  standardisation of the {kind} (mean/scale): {pairs}")
    if constant:
        lines.append(f"  constant in the source table: {', '.join(constant)}")
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def source_name(card: dict[str, Any]) -> str:
    """The source table's file name, or what stood in for it (inputs drawn from the source
    checkpoint's statistics and the target's inputs, labelled by the checkpoint)."""
    source = card["data"]["source"]
    if source.get("file"):
        return Path(source["file"]).name
    return (
        f"the source checkpoint ({source.get('generated_rows', 0):,} generated inputs and "
        f"{source.get('target_input_rows', 0):,} target inputs, labelled by it)"
    )


def _kept_name(card: dict[str, Any]) -> str:
    kept = card.get("method", "pacnet")
    return "PAC-Net" if kept == "pacnet" else kept
