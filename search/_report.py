"""Run outputs: ``pareto_<device>.json``, ``front_<device>.png`` (over all trials),
``hypervolume.png``, ``summary.md``, and the fronts as a text table."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from search_space.io import atomic_write_json, atomic_write_text, save_png

from ._fronts import DeviceFront, FrontPoint, Trials

FORMAT, VERSION = "hwnas-pareto", 1


def _cost_key(front: DeviceFront) -> str:
    return "latency_ms" if front.cost.startswith("latency:") else front.cost


def _pair(point: FrontPoint, name: str) -> dict:
    out = {"predicted": point.predicted[name]}
    if name in point.measured:
        out["measured"] = point.measured[name]
    return out


def front_json(front: DeviceFront, run: Mapping) -> dict:
    """The ``pareto_<device>.json`` document: every number says whether it is predicted or measured."""
    on_measured = set(front.measured_front or [])
    rows = []
    for i, p in enumerate(front.points):
        rows.append({"trial": p.trial, "arch": str(p.arch), front.quality: _pair(p, front.quality),
                     _cost_key(front): _pair(p, front.cost), "flops": p.flops, "params": p.params,
                     "predicted_objectives": p.predicted,
                     "on_measured_front": (i in on_measured) if front.measured_front is not None else None})
    return {"format": FORMAT, "version": VERSION, "device": front.device, "quality": front.quality,
            "cost": front.cost, "budget": front.budget, "run": dict(run), "notes": front.notes,
            "hypervolume": {"value": front.hypervolume, "reference": list(front.reference), "history": front.history},
            "front": rows,
            "measured_front": None if front.measured_front is None else [str(front.points[i].arch) for i in front.measured_front]}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_front(path: str | Path, trials: Trials, front: DeviceFront) -> Path:
    """Every trial (feasible and not), the predicted front, and measured points where verified."""
    plt = _plt()
    q, c, ok = trials.column(front.quality), trials.column(front.cost), trials.feasible
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(c[ok], q[ok], s=3, c="0.7", alpha=0.5, lw=0, label=f"feasible trials ({int(ok.sum())})")
    if (~ok).any():
        ax.scatter(c[~ok], q[~ok], s=3, c="tab:red", alpha=0.25, lw=0, label=f"over budget ({int((~ok).sum())})")
    if front.points:
        fc = [p.predicted[front.cost] for p in front.points]
        fq = [p.predicted[front.quality] for p in front.points]
        ax.step(fc, fq, where="post", c="tab:blue", lw=1.2)
        ax.scatter(fc, fq, s=14, c="tab:blue", zorder=3, label=f"front, predicted ({len(fc)})")
    verified = [p for p in front.points if p.measured]
    if verified:
        mc = [p.value(front.cost) for p in verified]
        mq = [p.value(front.quality) for p in verified]
        for p, x, y in zip(verified, mc, mq):
            ax.plot([p.predicted[front.cost], x], [p.predicted[front.quality], y], c="tab:orange", lw=0.6, alpha=0.7)
        ax.scatter(mc, mq, s=22, marker="D", c="tab:orange", zorder=4, label=f"verified: measured ({len(mc)})")
    if front.budget is not None:
        ax.axvline(front.budget, c="tab:red", ls="--", lw=1, label=f"budget {front.budget:g}")
    ax.set_xlabel(f"{front.cost}" + (" (ms)" if front.cost.startswith("latency:") else ""))
    ax.set_ylabel(front.quality)
    ax.set_title(f"{front.device}: {len(trials)} trials")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_hypervolume(path: str | Path, fronts: Mapping[str, DeviceFront]) -> Path:
    """Hypervolume of each device's front against the number of trials, as a share of the final one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d, f in fronts.items():
        if f.history and f.hypervolume > 0:
            n, hv = zip(*f.history)
            ax.plot(n, np.asarray(hv) / f.hypervolume, label=d)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume / final")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path, dpi=120, bbox_inches="tight")


def _fmt(point: FrontPoint, name: str, digits: int) -> str:
    pred = f"{point.predicted[name]:.{digits}f}"
    return f"{pred} / {point.measured[name]:.{digits}f}" if name in point.measured else pred


def format_fronts(fronts: Mapping[str, DeviceFront], max_rows: int = 30) -> str:
    """The fronts as a plain-text table (predicted / measured where verified; * = on the measured front)."""
    lines = []
    for d, f in fronts.items():
        budget = f", budget {f.budget:g}" if f.budget is not None else ""
        lines.append(f"== {d}: {len(f.points)} Pareto-optimal archs ({f.quality} vs {f.cost}{budget}); "
                     f"values predicted / measured")
        lines.append(f"{'':2}{f.quality:>17} {f.cost:>19} {'MFLOPs':>9}  arch")
        on = set(f.measured_front or [])
        rows = f.points if len(f.points) <= max_rows else f.points[:: max(1, len(f.points) // max_rows)]
        for p in rows:
            i = f.points.index(p)
            mark = "*" if i in on else " "
            flops = f"{p.flops / 1e6:9.1f}" if p.flops is not None else f"{'-':>9}"
            lines.append(f"{mark:2}{_fmt(p, f.quality, 4):>17} {_fmt(p, f.cost, 3):>19} {flops}  {p.arch}")
        if len(rows) < len(f.points):
            lines.append(f"  ... {len(f.points) - len(rows)} more in pareto_{d}.json")
        lines += [f"  note: {n}" for n in f.notes]
    return "\n".join(lines)


def write_summary(path: str | Path, trials: Trials, fronts: Mapping[str, DeviceFront], run: Mapping) -> Path:
    """A markdown summary of the run: settings, each front (predicted vs measured), plots."""
    out = ["# hwnas search summary", "", "| setting | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in run.items()]
    out += ["", f"{len(trials)} completed trials, {int(trials.feasible.sum())} within every budget.", ""]
    for d, f in fronts.items():
        budget = f" (budget {f.budget:g})" if f.budget is not None else ""
        out += [f"## {d}{budget}", "", f"![front](front_{d}.png)", "",
                f"Hypervolume {f.hypervolume:.6g} (reference {f.reference[0]:.4g} {f.quality}, {f.reference[1]:.4g} {f.cost}).", ""]
        out += [f"- {n}" for n in f.notes] + ([""] if f.notes else [])
        out += [f"| arch | {f.quality} predicted | {f.quality} measured | {f.cost} predicted | {f.cost} measured | MFLOPs | on measured front |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        on = set(f.measured_front or [])
        for i, p in enumerate(f.points):
            meas_q = f"{p.measured[f.quality]:.4f}" if f.quality in p.measured else "–"
            meas_c = f"{p.measured[f.cost]:.3f}" if f.cost in p.measured else "–"
            flops = f"{p.flops / 1e6:.1f}" if p.flops is not None else "–"
            mark = ("yes" if i in on else "no") if f.measured_front is not None else "–"
            out.append(f"| `{p.arch}` | {p.predicted[f.quality]:.4f} | {meas_q} | {p.predicted[f.cost]:.3f} | {meas_c} | {flops} | {mark} |")
        out.append("")
    out += ["![hypervolume](hypervolume.png)", ""]
    return atomic_write_text(path, "\n".join(out))


def write_report(out_dir: str | Path, trials: Trials, fronts: Mapping[str, DeviceFront], run: Mapping) -> list[Path]:
    """Write every output of a run into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    written = []
    for d, f in fronts.items():
        written.append(atomic_write_json(out / f"pareto_{d}.json", front_json(f, run)))
        written.append(plot_front(out / f"front_{d}.png", trials, f))
    written.append(plot_hypervolume(out / "hypervolume.png", fronts))
    written.append(write_summary(out / "summary.md", trials, fronts, run))
    return written
