"""``pacnet status``: where the grids of a results database stand, as text."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from pacnet.experiments.store import GridStatus


def duration(seconds: float) -> str:
    """``seconds`` for a person: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _clock(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def grid_text(g: GridStatus) -> list[str]:
    """The lines of one grid: counts, each running run (where, since when), each failed
    run (its error's last line), and the estimated time left."""
    p = g.progress
    lines = [
        f"grid {g.grid_id}  {g.label}",
        f"  registered {_clock(g.created)}",
        f"  {p.total} runs: {p.done} done, {p.running} running, {p.pending} pending, "
        f"{p.failed} failed",
    ]
    width = max((len(r.describe()) for r in [*g.running, *g.failed]), default=0)
    for r in g.running:
        since = "" if r.claimed is None else f", since {_clock(r.claimed)}"
        took = "" if r.claimed is None else f" ({duration(g.now - r.claimed)})"
        if r.lease_left is not None and r.lease_left < 0:
            lease = f", lease expired {duration(-r.lease_left)} ago: claimed again next"
        else:
            lease = ""
        attempt = f", attempt {r.attempts}" if r.attempts > 1 else ""
        lines.append(
            f"  running  {r.describe():<{width}}  on {r.host}, process {r.pid}"
            f"{since}{took}{attempt}{lease}"
        )
    for r in g.failed:
        error = (r.error or "").strip().splitlines()[-1:] or ["no error text"]
        where = f" on {r.host}, process {r.pid}" if r.host else ""
        tries = f"{r.attempts} attempt{'s' * (r.attempts != 1)}"
        lines.append(f"  failed   {r.describe():<{width}}  {error[0]} ({tries}{where})")
    if p.open == 0:
        lines.append(
            "  complete"
            if not p.failed
            else "  finished but for the failed runs "
            "(pacnet reproduce ... --retry-failed runs them again)"
        )
    elif g.eta_seconds is None:
        lines.append("  time left: unknown until a run finishes")
    else:
        workers = f"{g.workers} worker{'s' * (g.workers != 1)}" if g.workers else "no worker"
        lines.append(
            f"  time left: about {duration(g.eta_seconds)} (mean run "
            f"{duration(g.mean_seconds or 0.0)} over {g.finished_runs} finished; "
            f"{workers} running now)"
        )
    return lines


def status_text(where: str, stored: int, grids: Sequence[GridStatus]) -> str:
    """The whole ``pacnet status`` report of a database."""
    lines = [f"results database {where}: {stored} finished run{'s' * (stored != 1)}"]
    if not grids:
        lines.append("no grid registered (pacnet reproduce registers one)")
    for g in grids:
        lines += ["", *grid_text(g)]
    return "\n".join(lines)
