"""``DIR/report.md`` of an ``hwnas run``: fronts per device (table + plot), latency-table and
predictor fidelity, exported models and the time of every stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

from search_space.io import atomic_write_text


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def _num(pair, fmt: str) -> str:
    """'predicted / measured' of a front value."""
    if not isinstance(pair, dict):
        return format(pair, fmt) if isinstance(pair, (int, float)) else "-"
    p = format(pair["predicted"], fmt)
    return f"{p} / {format(pair['measured'], fmt)}" if "measured" in pair else f"{p} / -"


def front_table(front: dict) -> list[str]:
    """Markdown rows of one device's front."""
    cost = "latency_ms" if any("latency_ms" in r for r in front["front"]) else front["cost"]
    lines = ["| # | arch | accuracy (pred / meas) | latency ms (pred / meas) | MFLOPs | params M |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(front["front"]):
        lines.append(f"| {i} | `{r['arch']}` | {_num(r.get('accuracy'), '.4f')} | {_num(r.get(cost), '.4f')} "
                     f"| {r['flops'] / 1e6:.2f} | {r['params'] / 1e6:.3f} |")
    return lines


def write_run_report(pipeline) -> Path:
    """Write ``report.md`` from the outputs and manifest of ``pipeline``'s run."""
    out, cfg, man = pipeline.out, pipeline.cfg, pipeline.runner.manifest
    lines = [f"# hwnas run: {cfg['name']}", "",
             f"Space `{pipeline.space.name}` ({pipeline.space.fingerprint}, {pipeline.space.size():.3g} architectures), "
             f"dataset `{cfg['dataset']['name']}`, device `{cfg['device']}`, seed {cfg['seed']}. "
             "Accuracies are top-1 on the dataset's validation split (held out from training), BN recalibrated; "
             "'pred' = predicted by the predictor or the latency table, 'meas' = measured on this machine.", ""]
    train = man.get("train", {}).get("summary", {})
    last = train.get("last_epoch", {})
    if last:
        accs = ", ".join(f"{k[len('val_acc_'):]} {v:.4f}" for k, v in last.items() if k.startswith("val_acc_"))
        t = cfg["train"]
        lines += ["## Supernet", "",
                  f"{last.get('epoch')} epochs, batch {t['batch_size']}, peak lr {t['lr']}, students `{t['students']}` "
                  f"+ {t['num_random']} random per step; final training loss {last.get('loss', float('nan')):.4f}; "
                  f"validation accuracy: {accs or '-'}.", ""]
    lat = man.get("latency", {}).get("summary", {})
    for d in pipeline.devices():
        name = d["name"]
        front = json.loads((out / "search" / f"pareto_{name}.json").read_text())
        budget = cfg["search"]["budgets"].get(name)
        lines += [f"## Device `{name}` ({d['backend']}, batch {d['batch_size']}, {d['dtype']})"
                  + (f", budget {budget} ms" if budget else ""), ""]
        lines += front_table(front) + [""]
        if front.get("notes"):
            lines += [f"Notes: {front['notes']}", ""]
        lines += [f"![front {name}](search/front_{name}.png)", ""]
    lines += rounds_section(out)
    lines += ["## Latency-table fidelity (whole subnets measured on this machine)", "",
              "| device | model | MAPE | within ±10% | Kendall tau | measurement repeatability (±10%) |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, s in lat.items():
        if name == "skipped_devices":
            continue
        for model, m in s["scores"].items():
            lines.append(f"| {name} | {model} | {_pct(m['mape'])} | {_pct(m['within_10'])} | {m['kendall_tau']:.3f} "
                         f"| {_pct(s['repeatability']['within_10'])} |")
    nodes = [f"`{name}` on {s['node']['host']} (node {s['node']['node_id'][:12]})" for name, s in lat.items()
             if name != "skipped_devices" and s.get("node")]
    lines += ["", f"Built and validated on Ray nodes: {', '.join(nodes)}."] if nodes else []
    advice = [f"- `{name}`: {line}." for name, s in lat.items() if name != "skipped_devices" for line in s.get("advice", [])]
    lines += ["", "Advice:", *advice] if advice else []
    if lat.get("skipped_devices"):
        lines += ["", f"Not measured here (no CUDA device): {', '.join(lat['skipped_devices'])}."]
    pred = man.get("predictor", {}).get("summary", {})
    fit = man.get("accuracy", {}).get("summary", {}).get("fit", "?")
    lines += ["", f"## Predictor fidelity (fitted on {fit} subnets, scored on held-out subnets)", "",
              "| " + " | ".join(pred) + " |", "| " + " | ".join("---:" for _ in pred) + " |",
              "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in pred.values()) + " |",
              "", "![predictor](predictor/predicted_vs_measured.png)", ""]
    lines += final_section(out, pipeline.devices())
    exported = man.get("export", {}).get("summary", {})
    lines += ["## Exported models", ""]
    for name, files in exported.items():
        lines += [f"- `{name}`: " + ", ".join(f"`{Path(f).relative_to(out)}`" for f in files)]
    lines += ["", "## Stage timings", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {s} | {t:.1f} |" for s, t in pipeline.runner.seconds().items()]
    invocations = out / "invocations.json"
    if invocations.exists():
        runs = json.loads(invocations.read_text())
        lines += ["", f"## Invocations ({len(runs)} `hwnas run` call{'s' if len(runs) != 1 else ''})", "",
                  "| started | ended | status | stages run | stages skipped |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['started']} | {r['ended']} | {r['status']} | {', '.join(r['ran']) or '-'} "
                  f"| {', '.join(r['skipped']) or '-'} |" for r in runs]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def rounds_section(out: Path) -> list[str]:
    """The search in rounds (``search/measured.json``): what each round measured and what it cost,
    the extra measurement time included, and the best accuracy it found against the known subnets'."""
    path = out / "search" / "measured.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    run, log = data["run"], data["log"]
    points = [p for p in data["points"] if math.isfinite(p.get("accuracy") or math.nan)]  # a failed measurement: NaN
    known = [p["accuracy"] for p in points if p["round"] < 0]
    new = [p["accuracy"] for p in points if p["round"] >= 0]
    measure_s = sum(r.get("measure_s", 0.0) for r in log)
    lines = ["## Search in rounds (every measured subnet: `search/measured.json`)", "",
             f"{run['measured']} subnets measured on the supernet, a seed batch (round 0) then {len(log) - 1} rounds "
             f"(query budget {run['queries']}), "
             f"beside the {run['known']} of the accuracy dataset; predictor `{run['model']}` refitted every round, "
             f"{run['inner_trials']} predicted trials per round. Measuring took **{measure_s:.1f} s** of the search's "
             f"{run['search_seconds']:.1f} s.", "",
             "| round | measured | total | fit s | inner search s | measure s |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['round']} | {r['measured']} | {r['total']} | {r.get('fit_s', '-')} | {r.get('search_s', '-')} "
              f"| {r['measure_s']} |" for r in log]
    if known and new:
        lines += ["", f"Most accurate subnet measured in the rounds: {max(new):.4f}; in the accuracy dataset: "
                      f"{max(known):.4f}."]
    budgets = run.get("budgets_ms") or {}
    within = [p for p in points if all(p.get(name, math.inf) <= limit for name, limit in budgets.items())]
    if budgets and within:  # what the fronts' tops are made of: did the rounds find better than the dataset?
        best = {side: max((p["accuracy"] for p in within if (p["round"] >= 0) == side), default=None)
                for side in (True, False)}
        lines += [f"Within every budget ({', '.join(f'{n} <= {v} ms' for n, v in budgets.items())}): "
                  f"{len(within)} measured subnets, the most accurate {max(p['accuracy'] for p in within):.4f} "
                  f"(rounds {_opt(best[True])}, accuracy dataset {_opt(best[False])})."]
    return lines + [""]


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def final_section(out: Path, devices: list[dict]) -> list[str]:
    """Report lines of the final stage: the chosen models beside the baselines, trained alone with
    one recipe and measured on every device, the verdicts, and the ranking check."""
    path = out / "final" / "results.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    models, summary = list(res["models"].values()), res.get("summary", {})
    recipe = summary.get("recipe", {})
    names = [d["name"] for d in devices]
    lines = ["## Final training: chosen models beside the baselines (trained alone, measured)", "",
             f"Every network below was trained alone with one recipe: {recipe.get('epochs')} epochs, batch "
             f"{recipe.get('batch_size')}, label smoothing {recipe.get('label_smoothing')}, logit scale "
             f"{recipe.get('logit_scale')}, weight decay {recipe.get('weight_decay')}; accuracy is top-1 on the test "
             "split (val picks the init: `deployed`); latency is measured on each device by the same backend, "
             "all models in interleaved rounds.", "",
             "| model | role | init | deployed | params | supernet val | estimate val | val | test | "
             + " | ".join(f"{n} ms" for n in names) + " |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
    # the fine-tuned estimate the `measured` rule picked by (role "estimate", one per arch)
    estimates = {m["arch"]: m["val"] for m in models if m["role"] == "estimate"}
    for r in sorted((m for m in models if m["role"] not in ("ranking", "estimate")), key=lambda m: (m["role"] != "baseline", -m["test"])):
        lat = [f"{r['latency'][n]['ms']:.4g}" if n in r.get("latency", {}) else "-" for n in names]
        sup = f"{r['supernet_val']:.4f}" if "supernet_val" in r else "-"
        est = f"{estimates[r['arch']]:.4f}" if r.get("arch") in estimates else "-"
        by = summary.get("chosen_by", {})  # device -> arch -> the choice rule that picked it
        where = ", ".join(f"{d}: {by[d][r['arch']]}" if r["arch"] in by.get(d, {}) else d for d in r["devices"])
        lines.append(f"| `{r['label']}` | {r['role']}" + (f" ({where})" if r["role"] == "chosen" else "")
                     + f" | {r['init']} | {'yes' if r.get('deployed') else '-'} | {r['params'] / 1e6:.2f}M | {sup} | {est} "
                     f"| {r['val']:.4f} | {r['test']:.4f} | " + " | ".join(lat) + " |")
    for name in names:
        v = summary.get("verdicts", {}).get(name, [])
        if not v:
            continue
        lines += ["", f"### `{name}`: the deployed models against each baseline", "",
                  "| baseline | model | latency ratio | test accuracy gain | verdict |", "| --- | --- | ---: | ---: | --- |"]
        for x in v:
            verdict = ("**at half the latency and at least as accurate**" if x["half_latency_and_at_least_as_accurate"]
                       else "faster and at least as accurate" if x["faster_and_at_least_as_accurate"] else "not better")
            lines.append(f"| `{x['baseline']}` | `{x['model']}` | {x['latency_ratio']:.3f} | {100 * x['test_gain']:+.2f} pts "
                         f"| {verdict} |")
        lines += ["", f"![final {name}](final/final_{name}.png)"]
    rank = summary.get("ranking")
    if rank:
        tau = rank.get("kendall_tau")
        lines += ["", "### Can I trust the front? (supernet ranking against stand-alone training)", "",
                  f"{rank['n']} architectures spread along the fronts, each trained alone for {rank.get('epochs')} "
                  f"epochs: Kendall tau between supernet and stand-alone validation accuracy "
                  f"**{tau if tau is not None else '-'}**."]
        res = rank.get("resolvable")
        if res and not res["ok"]:
            lines += ["", f"**Too close to rank:** the stand-alone accuracies span {100 * res['spread']:.1f} points, less "
                      f"than 4 standard errors of one score on {res['val_images']} validation images "
                      f"({100 * res['standard_error']:.1f} points each): both taus here are noise. More validation "
                      "images, more ranking epochs or archs further apart answer the question."]
        est = rank.get("estimate")
        if est:
            t = est.get("kendall_tau")
            lines += ["", f"The fine-tuned estimate ({est['epochs']} epochs from the supernet's weights at lr "
                      f"{est['lr']:g}, what the `measured` choice rule picks by): Kendall tau "
                      f"**{t if t is not None else '-'}** on the same {est['n']} architectures."]
        lines += ["", "![ranking](final/ranking.png)"]
    return lines + [""]


def best_known(pair) -> tuple[float | None, str]:
    """(value, 'measured' | 'predicted' | '') of a front value: measured when verified, else
    predicted; a plain number as it is; None when there is none."""
    if isinstance(pair, dict):
        return (pair["measured"], "measured") if "measured" in pair else (pair.get("predicted"), "predicted")
    return (pair, "") if isinstance(pair, (int, float)) else (None, "")


def _best(pair) -> str:
    """:func:`best_known`, formatted."""
    value, kind = best_known(pair)
    return "-" if value is None else f"{value:.4g}" + (f" ({kind})" if kind else "")


def ranking_line(rank: dict) -> str:
    """The ranking check in one line (terminal of `hwnas run` and `hwnas final`)."""
    est = rank.get("estimate")
    noise = not rank.get("resolvable", {"ok": True})["ok"]
    return (f"ranking check: Kendall tau {rank['kendall_tau']} on {rank['n']} front archs (supernet)"
            + (f", {est['kendall_tau']} (fine-tuned estimate)" if est else "")
            + ("; stand-alone accuracies too close to rank: noise" if noise else ""))


def console_summary(pipeline) -> str:
    """A few lines for the terminal: per device the front's size and ranges and the most accurate
    exported model (the report holds everything else)."""
    out, lines = pipeline.out, []
    for d in pipeline.devices():
        name = d["name"]
        front = json.loads((out / "search" / f"pareto_{name}.json").read_text())["front"]
        # a front searched in rounds is made of subnets measured on the supernet: say so
        measured = all(isinstance(r["accuracy"], dict) and "measured" in r["accuracy"] for r in front)
        acc = [r["accuracy"]["measured" if measured else "predicted"] if isinstance(r["accuracy"], dict) else r["accuracy"]
               for r in front]
        lat = [r["latency_ms"]["predicted"] if isinstance(r.get("latency_ms"), dict) else r.get("latency_ms", 0.0)
               for r in front]
        budget = pipeline.cfg["search"]["budgets"].get(name)
        lines.append(f"{name} ({d['backend']}, batch {d['batch_size']}, {d['dtype']}"
                     + (f", budget {budget} ms" if budget else "") + f"): {len(front)} Pareto points, "
                     f"{min(lat):.4g}-{max(lat):.4g} ms, accuracy {min(acc):.4f}-{max(acc):.4f} "
                     + ("(measured on the supernet)" if measured else "(predicted)"))
        top = out / "models" / f"top_{name}.json"
        if top.exists():
            best = json.loads(top.read_text())["front"][0]
            final = best.get("final")
            acc = (f"{final['test']:.4g} (trained alone, test)" if final else _best(best["accuracy"]))
            what = "picked (best validation accuracy, trained alone)" if final else "most accurate exported"
            lines.append(f"  {what}: {best['arch']}  accuracy {acc}, "
                         f"latency {_best(best.get('latency_ms'))} ms -> {out / 'models' / f'{name}_rank00.onnx'}")
    for name in pipeline.skipped_devices():
        lines.append(f"{name}: not measured here (no CUDA device)")
    rank = (pipeline.final_results() or {}).get("summary", {}).get("ranking")
    if rank:  # can I trust the front? one line of the report's answer
        lines.append(ranking_line(rank))
    lines.append(f"report: {out / 'report.md'}")
    return "\n".join(lines)
