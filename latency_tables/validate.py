"""Validating a table: random subnets measured end to end against the table's predictions.

Each subnet is measured in several passes over all subnets (minutes apart). Pass 2 against
pass 1 says how repeatable the measurement itself is: a table cannot be judged more precisely
than the device can be measured. The reference "measured" latency is the minimum over the
passes, as for calibration networks (interference only adds time). In the same run a FLOPs
proxy (latency = a + b * FLOPs, fitted on the table's calibration networks) is scored on the
same subnets.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from search_space.io import atomic_write_json, atomic_write_text, save_png

from .calibration import fit_flops_proxy
from .errors import TableError
from .build import DEFAULT_PASSES
from .measure import NET_CHUNK, measure_passes, passes_ms, sample_archs
from .metrics import accuracy_metrics, repeatability
from .table import LatencyTable, now
from .timing import TimingStats

TARGET_WITHIN_10 = 0.95
TARGET_TAU = 0.9
DEFAULT_SEED = 1000  # calibration uses the build seed (0 by default); archs are also excluded explicitly


def validate_table(table: LatencyTable, n: int = 200, seed: int = DEFAULT_SEED, out_dir: str | Path = "experiments/results/latency",
                   name: str | None = None, command: str = "", chunk: int = NET_CHUNK, passes: int = DEFAULT_PASSES,
                   save_table: bool = True, reuse: bool = False) -> dict:
    """Measure ``n`` random subnets (disjoint from the calibration ones) in ``passes`` passes and
    score the table and a FLOPs proxy; writes ``<name>.md``, ``<name>.csv`` and ``<name>.png`` to
    ``out_dir`` and stores the summary in the table. Resumable: measured passes are kept in a
    ``.partial.json`` file while the table's measurements are unchanged. With ``reuse``, a
    validation the table records with the same measurements, ``n``, seed and passes, whose
    report is in ``out_dir``, is returned without measuring (a resumed ``hwnas run``)."""
    if not table.is_complete:
        raise TableError(f"latency table {table._where()} is incomplete: finish it with `{table.build_command()}`")
    if n < 4:
        raise TableError(f"--n {n}: expected at least 4 validation subnets")
    if passes < 2:
        raise TableError(f"--passes {passes}: expected at least 2 (repeatability compares pass 2 with pass 1)")
    space = table.space
    out_dir = Path(out_dir)
    name = name or report_name(table)
    archs = sample_archs(space, n, seed, exclude={c["arch"] for c in table.data["calibration_nets"]})
    state_path = out_dir / f".{name}.partial.json"
    ident = {"table": table.measurement_digest(), "n": n, "seed": seed, "passes": passes}
    done_before = table.data.get("validation") or {}
    if reuse and done_before.get("ident") == ident and (out_dir / f"{name}.md").exists():
        print(f"{table.device}: validation of {n} subnets finished earlier ({done_before['date']}): kept",
              file=sys.stderr, flush=True)
        return done_before
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("ident") != ident:
        state = {"ident": ident, "done": {}}
    t0 = time.time()
    measure_passes(table.make_backend(), space, archs, passes, state["done"],
                   lambda: atomic_write_json(state_path, state), chunk, desc=f"{table.device}: validation nets")
    seconds = time.time() - t0

    runs = [[TimingStats.from_json(st) for st in state["done"][str(a)][:passes]] for a in archs]
    first, second = np.array([r[0].ms for r in runs]), np.array([r[1].ms for r in runs])
    measured = np.array([passes_ms(state["done"][str(a)][:passes]) for a in archs])
    flops = np.array([space.flops(x) for x in archs], dtype=np.float64)
    cal = table.data["calibration_nets"]
    fa, fb = fit_flops_proxy([space.flops(space.parse(c["arch"])) for c in cal], [passes_ms(c["passes"]) for c in cal])
    preds = {"table": table.predict_many(archs), "raw block sum": np.array([table.raw_sum(x) for x in archs]),
             "FLOPs proxy": fa + fb * flops / 1e9}
    scores = {k: accuracy_metrics(p, measured) for k, p in preds.items()}
    summary = {
        "date": now(), "command": command, "n": n, "seed": seed, "passes": passes, "seconds": round(seconds, 1),
        "scores": scores, "flops_proxy": {"intercept_ms": fa, "ms_per_gflop": fb},
        "repeatability": repeatability(first, second),
        "repeatability_median": repeatability([r[0].median_ms for r in runs], [r[1].median_ms for r in runs]),
        "targets": {"within_10": TARGET_WITHIN_10, "kendall_tau": TARGET_TAU,
                    "met": bool(scores["table"]["within_10"] >= TARGET_WITHIN_10 and scores["table"]["kendall_tau"] >= TARGET_TAU)},
        "files": {k: f"{name}.{k}" for k in ("md", "csv", "png")}, "ident": ident,
    }
    summary["advice"] = advice(summary)
    _write_csv(out_dir / f"{name}.csv", _csv_rows(archs, flops, measured, runs, preds))
    if not _write_plot(out_dir / f"{name}.png", measured, preds, scores, table):
        summary["files"]["png"] = None
    atomic_write_text(out_dir / f"{name}.md", render_report(table, summary))
    if save_table and table.path is not None:
        table.data["validation"] = summary
        table.save()
    state_path.unlink(missing_ok=True)
    return summary


def _csv_rows(archs, flops, measured, runs, preds: dict) -> list[dict]:
    """One row per subnet: FLOPs, measured (and every pass: estimate and median), predictions."""
    rows = []
    for i, (a, r) in enumerate(zip(archs, runs)):
        row = {"arch": str(a), "flops": int(flops[i]), "measured_ms": float(measured[i])}
        row.update({f"pass{p + 1}_ms": st.ms for p, st in enumerate(r)})
        row.update({f"pass{p + 1}_median_ms": st.median_ms for p, st in enumerate(r)})
        row.update({f"{k.replace(' ', '_')}_ms": float(v[i]) for k, v in preds.items()})
        rows.append(row)
    return rows


def report_name(table: LatencyTable) -> str:
    """Default file stem of a table's validation report: ``latency_<table file stem>_validation``."""
    return f"latency_{Path(table.path).stem if table.path else table.device}_validation"


def replot_validation(table: LatencyTable, csv_path: str | Path) -> Path:
    """Redraw the scatter plot (PNG next to the CSV) from a validation CSV, without measuring."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        measured = np.array([float(r["measured_ms"]) for r in rows])
        cols = [c for c in rows[0] if c.endswith("_ms") and c != "measured_ms" and not c.startswith("pass")]
        preds = {c[:-3].replace("_", " "): np.array([float(r[c]) for r in rows]) for c in cols}
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise TableError(f"validation CSV {str(csv_path)!r} cannot be read ({e}): expected one written by "
                         f"`hwnas latency validate`") from None
    scores = {k: accuracy_metrics(p, measured) for k, p in preds.items()}
    png = csv_path.with_suffix(".png")
    if not _write_plot(png, measured, preds, scores, table):
        raise TableError("matplotlib is not installed: expected it to draw the plot")
    return png


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _write_plot(path: Path, measured, preds: dict, scores: dict, table: LatencyTable) -> bool:
    """Scatter of predicted vs measured; False (and a warning) where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        warnings.warn(f"matplotlib is not installed: no plot {path}; re-plot elsewhere with "
                      f"`hwnas latency validate --replot`", RuntimeWarning)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    lo, hi = float(measured.min()) * 0.8, float(measured.max()) * 1.25
    x = np.array([lo, hi])
    ax.fill_between(x, x * 0.9, x * 1.1, color="0.85", label="±10%")
    ax.plot(x, x, color="0.4", lw=1)
    for (k, p), style in zip(preds.items(), ("o", "x", "^")):
        s = scores[k]
        ax.scatter(measured, p, s=12, marker=style, alpha=0.7,
                   label=f"{k}: {100 * s['within_10']:.0f}% within ±10%, tau {s['kendall_tau']:.2f}")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)",
           ylabel="predicted latency (ms)",
           title=f"{table.device}: {table.backend_spec}, batch {table.batch_size}, {table.dtype}")
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis in (ax.xaxis, ax.yaxis):  # plain numbers; 1, 2, 5 steps (default log labels collide)
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(LogLocator(subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    return True


# Below this share of nets re-measuring within ±10% of themselves, the machine, not the table,
# limits the score; beyond this systematic bias, the table was built in other conditions.
NOISY_REPEATABILITY, BIAS_TO_REBUILD = 0.95, 0.03


def advice(summary: dict) -> list[str]:
    """What to do about a missed target, read from a validation summary: measure on a quiet
    machine, or rebuild a table whose predictions are biased on a machine that measures steadily."""
    rep, table = summary["repeatability"]["within_10"], summary["scores"]["table"]
    if rep < NOISY_REPEATABILITY:
        return [f"the machine was noisy: only {100 * rep:.0f}% of nets re-measured within ±10% of themselves, so no "
                "table can score better than that here; validate (and build) again when the machine is quiet"]
    bias = table["median_ratio"] - 1
    if not summary["targets"]["met"] and abs(bias) > BIAS_TO_REBUILD:
        return [f"the machine measures steadily but the table predicts {100 * abs(bias):.0f}% too "
                f"{'high' if bias > 0 else 'low'} across the board: it was built in other conditions (load, clocks, "
                "versions); rebuild it to a new file (`hwnas latency build ... --out NEW.json`) and validate that"]
    return []


def render_report(table: LatencyTable, s: dict) -> str:
    """The markdown validation report."""
    fp, b, build = table.fingerprint, table.backend_settings, table.data["build"]
    rep, repm = s["repeatability"], s["repeatability_median"]
    lines = [
        f"# Latency table validation: {table.device} ({table.backend_spec}, batch {table.batch_size}, {table.dtype})",
        "",
        f"- table: `{table.path}` (space `{table.data['space']['name']}` {table.space_fingerprint}, "
        f"{len(table.data['blocks'])} blocks, {len(table.data['calibration_nets'])} calibration nets)",
        f"- validated {s['date']} with `{s['command'] or 'validate_table(...)'}`: {s['n']} random subnets "
        f"(seed {s['seed']}, disjoint from the calibration nets), each measured in {s['passes']} passes; {s['seconds']:.0f} s",
        f"- machine: {fp.get('cpu_model')} ({fp.get('cpu_cores')} cores), GPU {fp.get('gpu_name')} "
        f"(driver {fp.get('gpu_driver')}, CUDA {fp.get('cuda')}), torch {fp.get('torch')}, onnxruntime {fp.get('onnxruntime')}",
        f"- settings: " + ", ".join(f"{k}={v}" for k, v in b.items()),
        f"- build: `{build.get('command', '')}`; blocks {build.get('block_seconds', '?')} s, calibration "
        f"{build.get('calibration_seconds', '?')} s; calibration model `{table.calibration.model}` "
        f"(ridge {table.calibration.ridge:g}, leave-one-out MAPE {100 * table.calibration.cv.get('mape', float('nan')):.1f}%)",
        "",
        "## Measurement repeatability (pass 2 vs pass 1 on the same subnets)",
        "",
        "| statistic | within ±10% | median difference |",
        "| --- | --- | --- |",
        f"| 10th percentile (what tables use) | {100 * rep['within_10']:.1f}% | {100 * rep['median_rel_diff']:.1f}% |",
        f"| median | {100 * repm['within_10']:.1f}% | {100 * repm['median_rel_diff']:.1f}% |",
        "",
        f"## Prediction vs measured (minimum over the {s['passes']} passes)",
        "",
        "| predictor | MAPE | within ±10% | Kendall tau | median predicted/measured |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, m in s["scores"].items():
        lines.append(f"| {k} | {100 * m['mape']:.1f}% | {100 * m['within_10']:.1f}% | {m['kendall_tau']:.3f} | {m['median_ratio']:.3f} |")
    t, tm = s["scores"]["table"], s["targets"]
    verdict = "met" if tm["met"] else "MISSED"
    lines += ["", f"Target (>= {100 * tm['within_10']:.0f}% within ±10% and Kendall tau >= {tm['kendall_tau']}): **{verdict}** "
              f"({100 * t['within_10']:.1f}%, tau {t['kendall_tau']:.3f}).",
              f"FLOPs proxy: latency = {s['flops_proxy']['intercept_ms']:.4f} ms + {s['flops_proxy']['ms_per_gflop']:.4f} ms/GFLOP "
              f"(fitted on the calibration nets).", ""]
    if s["advice"]:
        lines += [*(f"Advice: {line}." for line in s["advice"]), ""]
    return "\n".join(lines)
