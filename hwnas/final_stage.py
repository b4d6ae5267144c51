"""The final stage: chosen models and baselines trained alone, measured side by side.

For each device, the architectures chosen from its front are trained stand-alone (from scratch
and/or from their inherited supernet weights; the better by validation accuracy is the one a
user gets), next to the baselines a user would otherwise pick (``hwnas.baselines``), all with
one recipe and timed by the same backends, in interleaved rounds, on every device. A ranking
check trains K architectures spread along the fronts on a short schedule and reports how well
the supernet's ranking held (Kendall tau). Everything lands in ``OUT/results.json``, rewritten
after each model, so an interrupted stage resumes with the next model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hwnas.baselines import make_baseline
from hwnas.final_training import evaluate_model, log, train_model
from hwnas.run_report import best_known
from search_space import SearchSpace
from search_space.errors import UserError
from search_space.io import atomic_write_json, save_png
from search_space.training import TrainConfig

INITS = ("scratch", "inherited")
RESULTS = "results.json"
# The fine-tuned estimate's peak lr as a fraction of the final recipe's: a few epochs from inherited weights at
# 1/5 of it ranked cifar_pool's archs at tau 0.68-0.78 against 30-epoch stand-alone training where the supernet
# alone ranked them at 0.32-0.47; at the full lr the weights were lost (tau 0.10): experiments/results/ranking/.
ESTIMATE_LR_FRACTION = 0.2


@dataclass
class Candidate:
    """One network to train: a subnet of the space (``arch``) or a baseline (``baseline``)."""

    role: str  # chosen | baseline | ranking | estimate
    arch: str | None = None
    baseline: str | None = None
    init: str = "scratch"
    devices: list[str] = field(default_factory=list)  # the fronts that chose it

    @property
    def key(self) -> str:
        """A file-safe identity (role, network, init)."""
        what = self.arch or self.baseline
        slug = hashlib.sha256(what.encode()).hexdigest()[:10]
        return f"{self.role}_{slug}_{self.init}"

    @property
    def label(self) -> str:
        """What the report calls it."""
        return self.baseline if self.baseline else self.arch


def spread(items: list, k: int) -> list:
    """``k`` items evenly spaced over ``items`` (all when there are fewer), ends included."""
    from search._pareto import spread_candidates

    return [items[i] for i in spread_candidates(len(items), k)]


def front_accuracy(entry: dict) -> float:
    """A front entry's best-known accuracy (measured on the supernet if verified, else predicted)."""
    return float(best_known(entry.get("accuracy"))[0])


def pick_ranking_archs(fronts: dict[str, list[dict]], pool: list[tuple[str, float]], k: int) -> list[str]:
    """``k`` distinct archs spread by accuracy along the fronts of every device, topped up with
    ``pool`` archs (e.g. the accuracy dataset's, with their accuracy) spread the same way."""
    on_fronts = {}
    for entries in fronts.values():
        for e in entries:
            on_fronts.setdefault(e["arch"], front_accuracy(e))
    chosen = [a for a, _ in spread(sorted(on_fronts.items(), key=lambda t: t[1]), k)]
    rest = sorted(((a, acc) for a, acc in pool if a not in on_fronts), key=lambda t: t[1])
    return chosen + [a for a, _ in spread(rest, k - len(chosen))] if len(chosen) < k else chosen


class FinalStage:
    """Train, evaluate and measure a list of candidates; resumable through ``out/results.json``."""

    def __init__(self, space: SearchSpace, out: str | Path, config: TrainConfig, bundle, device: torch.device,
                 checkpoint: str | Path | None = None, progress: bool = True, on_cluster: bool = False):
        self.space, self.out, self.config, self.bundle, self.device = space, Path(out), config, bundle, device
        # on_cluster: each device times the models in a Ray task on the node owning it (hwnas.cluster)
        self.checkpoint, self.progress, self.on_cluster = checkpoint, progress, on_cluster
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / RESULTS
        self.results = json.loads(path.read_text()) if path.exists() else {"models": {}}
        self._supernet = None

    def save(self) -> None:
        """Write ``results.json`` atomically."""
        atomic_write_json(self.out / RESULTS, self.results)

    # ---- building ----------------------------------------------------------------------
    def _supernet_weights(self):
        if self._supernet is None:
            if self.checkpoint is None:
                raise UserError("init 'inherited' needs the supernet checkpoint; expected a run with a trained supernet")
            from search_space import load_supernet

            self._supernet, _ = load_supernet(self.checkpoint, self.space)
        return self._supernet

    def build(self, c: Candidate) -> torch.nn.Module:
        """The candidate's network, initialised as it asks."""
        if c.baseline is not None:
            return make_baseline(c.baseline, self.space)
        if c.init == "inherited":
            return self._supernet_weights().extract(c.arch).cpu()
        from search_space import Subnet

        arch = self.space.parse(c.arch)
        torch.manual_seed(self.config.seed)
        return Subnet(arch, self.space.block_specs(arch), dropout=self.space.config.dropout)

    def resolution(self, c: Candidate) -> int:
        """Input size of the candidate (a subnet's own resolution; the data's for baselines)."""
        return self.space.parse(c.arch).resolution if c.arch else int(self.bundle.image_size)

    # ---- training ----------------------------------------------------------------------
    def train(self, c: Candidate, config: TrainConfig | None = None, recalibrate: dict | None = None) -> dict:
        """Train ``c`` (skipped when ``results.json`` has it), evaluate it, keep its weights. With
        ``recalibrate`` (``calib_batches`` x ``calib_batch_size`` training images), BN statistics are
        re-estimated before the evaluation, as the supernet's accuracies are: a few steps leave
        inherited statistics in them."""
        config = config or self.config
        done = self.results["models"].get(c.key)
        if done and done.get("recipe") == config.to_json() and done.get("bn_recalibrated") == recalibrate:
            done["devices"] = sorted(set(done.get("devices", [])) | set(c.devices))
            return done
        model = self.build(c)
        resolution = self.resolution(c)
        log(f"final: training {c.role} {c.label} ({c.init}, {config.epochs} epochs)")
        start = time.perf_counter()
        history = train_model(model, self.bundle, config, self.device, self.out / "train" / f"{c.key}.pt",
                              progress=self.progress, desc=f"{c.role} {c.key}", resolution=resolution)
        if recalibrate:
            from hwnas.data_wiring import calibration_batches
            from search_space import recalibrate_bn
            from search_space.evaluation import fit_resolution

            batches = calibration_batches(self.bundle, recalibrate["calib_batch_size"], self.device)
            with torch.no_grad():
                recalibrate_bn(model, (fit_resolution(x, resolution) for x, _ in batches()), recalibrate["calib_batches"])
        seconds = time.perf_counter() - start
        accs = evaluate_model(model, self.bundle, self.device, resolution)
        record = {"key": c.key, "role": c.role, "arch": c.arch, "baseline": c.baseline, "init": c.init,
                  "devices": sorted(c.devices), "label": c.label, "val": accs["val"], "test": accs["test"],
                  "params": int(sum(p.numel() for p in model.parameters())), "epochs": len(history),
                  "train_seconds": round(seconds, 1), "final_loss": history[-1]["loss"], "recipe": config.to_json(),
                  "weights": str(Path("models") / f"{c.key}.pt")}
        if recalibrate:
            record["bn_recalibrated"] = recalibrate
        if c.role == "estimate":  # a score, not a model anyone deploys
            record["weights"] = None
        else:
            self._save_weights(c, model, record)
        self.results["models"][c.key] = record
        self.save()
        (self.out / "train" / f"{c.key}.pt").unlink(missing_ok=True)  # the trained weights are kept instead
        log(f"final: {c.label} ({c.init}): val {accs['val']:.4f} test {accs['test']:.4f} in {seconds:.0f} s")
        return record

    def _save_weights(self, c: Candidate, model: torch.nn.Module, record: dict) -> None:
        model = model.cpu().eval()
        path = self.out / record["weights"]
        if c.arch is not None:  # an hwnas subnet file: `hwnas export` and load_model read it
            from hwnas.export import save_model

            save_model(path, model, self.space, {"final": {k: record[k] for k in ("val", "test", "init", "epochs")}})
        else:
            from search_space.io import atomic_torch_save

            atomic_torch_save({"baseline": c.baseline, "state_dict": model.state_dict()}, path)

    # ---- measuring ---------------------------------------------------------------------
    def measure(self, devices: list[dict], keys: list[str]) -> None:
        """Time every model in ``keys`` on every device (one backend per device, the models in
        interleaved rounds, so a noisy moment hurts all alike); cached per device settings."""
        from hwnas.cluster import time_models
        from hwnas.run_config import device_backend

        for d in devices:
            settings = {k: d[k] for k in ("backend", "batch_size", "dtype", "threads", "options") if k in d}
            todo = [k for k in keys if self.results["models"][k].get("latency", {}).get(d["name"], {}).get("settings")
                    != settings]
            if not todo:
                continue
            log(f"final: timing {len(todo)} models on {d['name']} ({d['backend']}, batch {d['batch_size']}, {d['dtype']})")
            items = []
            for k in todo:
                rec = self.results["models"][k]
                # latency depends on the architecture, not its weights: no supernet load for inherited ones
                c = Candidate(rec["role"], rec["arch"], rec["baseline"])
                r = self.resolution(c)
                items.append((self.build(c).eval(), (self.space.config.in_channels, r, r)))
            if self.on_cluster:
                stats = time_models(d, items)
            else:
                stats = device_backend(d).measure_many(items)
            for k, s in zip(todo, stats):
                self.results["models"][k].setdefault("latency", {})[d["name"]] = {
                    "ms": round(float(s.ms), 5), "median_ms": round(float(s.median_ms), 5), "settings": settings}
            self.save()

    def supernet_accuracy(self, archs: list[str], split_seed: int = 0, **measure) -> dict[str, float]:
        """Supernet (BN-recalibrated, validation) accuracy of ``archs``, measured as the accuracy
        stage measures (resumable file ``supernet_accuracy.jsonl``)."""
        from hwnas.accuracy import measure_accuracy_dataset

        data = measure_accuracy_dataset(self.checkpoint, [self.space.parse(a) for a in archs],
                                        self.out / "supernet_accuracy.jsonl", device=self.device, progress=False,
                                        bundle=self.bundle, **measure)
        return {r["arch"]: r["accuracy"] for r in data.records}

    def estimate(self, archs: list[str], epochs: int, lr: float | None = None, calib_batches: int = 20,
                 calib_batch_size: int = 256) -> dict[str, float]:
        """The fine-tuned estimate of ``archs``: validation accuracy after ``epochs`` of the final recipe
        from inherited supernet weights at peak ``lr`` (default: :data:`ESTIMATE_LR_FRACTION` of the
        recipe's), BN recalibrated on ``calib_batches`` x ``calib_batch_size`` training images as the
        supernet's accuracies are. It ranks archs as stand-alone training does far better than the
        supernet's own accuracy, for about ``epochs`` epochs of each arch; resumable like every training here."""
        config = self.estimate_config(epochs, lr)
        # BN recalibrated after the few steps: on digits (20 steps) the inherited statistics left in them cost up
        # to 25 points (0.713 vs 0.958); on CIFAR (194 steps) their weight is 0.9^194, nil
        calib = {"calib_batches": calib_batches, "calib_batch_size": calib_batch_size}
        return {a: self.train(Candidate("estimate", arch=a, init="inherited"), config, recalibrate=calib)["val"]
                for a in archs}

    def estimate_config(self, epochs: int, lr: float | None = None) -> TrainConfig:
        """The final recipe shortened to ``epochs`` at peak ``lr`` (None: :data:`ESTIMATE_LR_FRACTION` of its own)."""
        import dataclasses

        lr = ESTIMATE_LR_FRACTION * self.config.peak_lr if lr is None else lr
        return dataclasses.replace(self.config, epochs=epochs, lr=lr)


def refine_measured(stage: FinalStage, rules: dict[str, str], candidates: list[tuple[str, str]], top: int,
                    estimate: dict) -> dict[str, str]:
    """A device's picks with the ``measured`` ones replaced by the ``top`` best fine-tuned estimates
    (``estimate``: :meth:`FinalStage.estimate`'s settings) of ``candidates``: among cifar_pool archs
    within each budget, the supernet's own top pick scored 3 points under the best stand-alone, the
    estimate's top pick 0.1 (experiments/results/ranking/)."""
    est = stage.estimate([a for a, _ in candidates], **estimate)
    best = sorted(est, key=lambda a: -est[a])[:top]
    kept = {a: r for a, r in rules.items() if r != "measured" and a not in best}
    return {**{a: "measured+estimate" for a in best}, **kept}


def estimate_summary(ranking: dict, est: dict[str, float], epochs: int, lr: float) -> dict:
    """The ranking check of the fine-tuned estimate: its Kendall tau against the same stand-alone
    accuracies (each point of ``ranking`` gains ``estimate_val``)."""
    from scipy.stats import kendalltau

    pts = [p for p in ranking.get("points", []) if p["arch"] in est]
    for p in pts:
        p["estimate_val"] = est[p["arch"]]
    tau = kendalltau([p["estimate_val"] for p in pts], [p["standalone_val"] for p in pts]).statistic if len(pts) >= 3 else None
    return {"n": len(pts), "epochs": epochs, "lr": lr,
            "kendall_tau": None if tau is None or np.isnan(tau) else round(float(tau), 4)}


def resolvable(records: list[dict], val_images: int) -> dict:
    """Whether the stand-alone accuracies of the ranking check spread enough to be ranked: their range
    against 4 binomial standard errors of one validation score (on digits, 143 images, 8 archs
    within 5 images: any tau there is noise)."""
    vals = [r["val"] for r in records]
    p = float(np.mean(vals)) if vals else 0.0
    se = float(np.sqrt(max(p * (1 - p), 1e-12) / max(val_images, 1)))
    spread = (max(vals) - min(vals)) if vals else 0.0
    return {"val_images": val_images, "spread": round(spread, 4), "standard_error": round(se, 4),
            "ok": bool(spread >= 4 * se)}


def ranking_summary(records: list[dict], supernet_acc: dict[str, float]) -> dict:
    """Kendall tau between supernet and stand-alone validation accuracy of the ranking models."""
    from scipy.stats import kendalltau

    pairs = [(supernet_acc[r["arch"]], r["val"]) for r in records if r["arch"] in supernet_acc]
    if len(pairs) < 3:
        return {"n": len(pairs), "kendall_tau": None}
    a, b = np.array(pairs).T
    tau = kendalltau(a, b).statistic
    return {"n": len(pairs), "kendall_tau": None if np.isnan(tau) else round(float(tau), 4),
            "points": [{"arch": r["arch"], "supernet_val": supernet_acc[r["arch"]], "standalone_val": r["val"],
                        "standalone_test": r["test"]} for r in records if r["arch"] in supernet_acc]}


def plot_ranking(summary: dict, path: Path, epochs: int) -> Path | None:
    """Scatter of supernet against stand-alone validation accuracy, tau in the title."""
    if not summary.get("points"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = summary["points"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    tau = summary["kendall_tau"]
    ax.scatter([p["supernet_val"] for p in pts], [p["standalone_val"] for p in pts], s=18,
               label=f"supernet (BN recalibrated): tau {tau if tau is not None else '-'}")
    est = summary.get("estimate")
    if est:
        ax.scatter([p["estimate_val"] for p in pts if "estimate_val" in p],
                   [p["standalone_val"] for p in pts if "estimate_val" in p], s=18, marker="^",
                   label=f"+ {est['epochs']} epochs fine-tuned: tau {est['kendall_tau'] if est['kendall_tau'] is not None else '-'}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("estimated accuracy (val)")
    ax.set_ylabel(f"stand-alone accuracy (val, {epochs} epochs)")
    ax.set_title(f"Can I trust the front? Kendall tau on {summary['n']} archs", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def verdicts(records: list[dict], device: str) -> list[dict]:
    """For each baseline, each chosen model of ``device``: latency ratio, accuracy difference and
    the verdict (``faster and at least as accurate``; ``at half the latency`` when ratio <= 0.5)."""
    out = []
    chosen = [r for r in records if r["role"] == "chosen" and device in r["devices"] and r.get("deployed")]
    for b in (r for r in records if r["role"] == "baseline"):
        b_ms = b.get("latency", {}).get(device, {}).get("ms")
        for c in chosen:
            c_ms = c.get("latency", {}).get(device, {}).get("ms")
            if b_ms is None or c_ms is None:
                continue
            ratio, gain = c_ms / b_ms, c["test"] - b["test"]
            ok = ratio < 1 and gain >= 0
            out.append({"baseline": b["label"], "model": c["label"], "init": c["init"], "latency_ratio": round(ratio, 4),
                        "test_gain": round(gain, 5), "faster_and_at_least_as_accurate": ok,
                        "half_latency_and_at_least_as_accurate": ok and ratio <= 0.5})
    return out


def plot_device(records: list[dict], front: list[dict], device: str, path: Path) -> Path:
    """The device's front (supernet accuracy vs table latency, grey) with the trained models and
    baselines (test accuracy vs measured latency) drawn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.4))
    front = [e for e in front if e.get("latency_ms") is not None]  # a hand-written list of archs has none
    if front:
        lat = [float(best_known(e["latency_ms"])[0]) for e in front]
        ax.plot(lat, [front_accuracy(e) for e in front], "o-", color="0.7", ms=3, label="front (supernet accuracy)")
    for role, marker, color in (("chosen", "o", "tab:blue"), ("baseline", "*", "tab:red")):
        rs = [r for r in records if r["role"] == role and device in r.get("latency", {})
              and (role == "baseline" or (device in r["devices"] and r.get("deployed")))]
        if rs:
            ax.scatter([r["latency"][device]["ms"] for r in rs], [r["test"] for r in rs], marker=marker, color=color,
                       s=80 if marker == "*" else 30, label=f"{role} (trained alone, test)", zorder=3)
        for r in rs:
            if role == "baseline":
                ax.annotate(r["label"], (r["latency"][device]["ms"], r["test"]), fontsize=7,
                            xytext=(4, -10), textcoords="offset points")
                ax.axvline(r["latency"][device]["ms"] / 2, color=color, ls=":", lw=0.8)
    ax.set_xlabel(f"latency on {device} (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{device}: chosen models and baselines, measured (dotted: half a baseline's latency)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


CHOICE_RULES = ("auto", "top", "spread", "measured", "capacity")


def choose_entries(front: list[dict], n: int, rule: str = "spread") -> list[dict]:
    """The front entries to train alone: ``top``, the ``n`` most accurate (best-known accuracy);
    ``spread``, ``n`` spread along the front by latency, its fastest and slowest point included.
    ``spread`` is the default because a supernet's accuracies are flattest where it matters:
    every subnet within a tight budget scored 0.873-0.877 on the cifar_pool supernet, so the most
    accurate few are a coin toss and all sit at the fast end, leaving the budget unused."""
    if rule not in CHOICE_RULES:
        raise UserError(f"choice rule {rule!r} is unknown; expected one of {list(CHOICE_RULES)}")
    if rule == "auto":
        rule = "spread"
    if rule == "top":
        return sorted(front, key=lambda e: -front_accuracy(e))[:n]
    def latency(e: dict) -> float:  # an entry without a latency (a hand-written front) sorts last
        return np.inf if e.get("latency_ms") is None else float(best_known(e["latency_ms"])[0])

    by_latency = sorted(front, key=latency)
    return sorted(spread(by_latency, n), key=lambda e: -front_accuracy(e))


def choose_archs(front: list[dict], n: int, rule: str, pool: list[tuple[str, float]] = (), table=None,
                 budget: float | None = None, space: SearchSpace | None = None) -> list[str]:
    """The archs :func:`choose_with_rules` picks, without the rule that picked each."""
    return [a for a, _ in choose_with_rules(front, n, rule, pool, table, budget, space)]


def choose_with_rules(front: list[dict], n: int, rule: str, pool: list[tuple[str, float]] = (), table=None,
                      budget: float | None = None, space: SearchSpace | None = None) -> list[tuple[str, str]]:
    """``(arch, rule that picked it)`` of the archs to train alone for one device: ``top`` / ``spread`` pick front entries
    (:func:`choose_entries`); ``measured`` takes the ``n`` archs of highest *measured* supernet
    accuracy (``pool``, e.g. the accuracy dataset, and the front's verified points) whose latency on
    ``table`` is within ``budget``; ``capacity`` the ``n`` of most FLOPs within ``budget``
    (:func:`search.most_flops_within`, needs ``space``). ``auto`` (the default) is ``measured`` (or
    ``spread`` without measured accuracies) plus one ``capacity`` arch where the device has a budget
    and a table, else ``spread``: training both and deploying the better on validation data is
    what the measurements asked for. On cifar_pool the measured top within the budget trained alone
    to ResNet-18's accuracy at GPU batch 256 and on the CPU where the predicted front fell 3 points
    short; at GPU batch 1 the supernet scored the whole budget alike and the arch of most FLOPs
    won by 1 point (experiments/results/final/final_cifar_pool.md)."""
    measured = dict(pool)
    for e in front:
        acc = e.get("accuracy")
        if isinstance(acc, dict) and "measured" in acc:
            measured[e["arch"]] = float(acc["measured"])
    has_budget = table is not None and budget is not None
    if rule == "auto":
        if not has_budget or space is None:
            return choose_with_rules(front, n, "measured" if measured and has_budget else "spread", pool, table, budget)
        first = choose_with_rules(front, n, "measured" if measured else "spread", pool, table, budget)
        picked = dict(first + [p for p in choose_with_rules(front, 1, "capacity", pool, table, budget, space)
                               if p[0] not in dict(first)])
        return list(picked.items())
    if rule == "capacity":
        if not has_budget or space is None:
            raise UserError("choice rule 'capacity' needs a latency budget and a table for the device "
                            "(--budget DEVICE=MS and --table DEVICE=TABLE)")
        from search import most_flops_within

        return [(str(a), rule) for a in most_flops_within(space, table, budget, n)]
    if rule != "measured":
        return [(e["arch"], rule) for e in choose_entries(front, n, rule)]
    if not measured:
        raise UserError("choice rule 'measured' needs measured supernet accuracies: expected an accuracy dataset "
                        "(--accuracy-data) or a verified front")
    archs = sorted(measured, key=lambda a: -measured[a])
    if has_budget:
        archs = [a for a, ms in zip(archs, table.predict_many(archs)) if ms <= budget]
    return [(a, rule) for a in archs[:n]]


def run_final(stage: FinalStage, fronts: dict[str, list[dict]], devices: list[dict], *, top: int, choose: str = "auto",
              budgets: dict[str, float] | None = None, tables: dict | None = None,
              baselines: list[str], inits: list[str], ranking: int = 0, ranking_epochs: int = 0,
              pool: list[tuple[str, float]] = (), measure_settings: dict | None = None, estimate_epochs: int = 0,
              estimate_lr: float | None = None, estimate_candidates: int = 8) -> dict:
    """Train ``top`` archs per device (``choose``: see :func:`choose_archs`) with each of ``inits``, the
    ``baselines``, and ``ranking`` archs spread along the fronts (``ranking_epochs`` epochs);
    time them on ``devices``; mark per arch the init with the best validation accuracy as
    ``deployed``; write verdicts, the ranking check and plots. Returns the stage's summary.
    With ``estimate_epochs`` and a checkpoint, the ``measured`` rule's picks are the best
    :meth:`FinalStage.estimate` of its ``estimate_candidates`` most accurate archs within the budget,
    and the ranking check also scores that estimate."""
    for init in inits:
        if init not in INITS:
            raise UserError(f"final init {init!r} is unknown; expected one of {list(INITS)}")
    if choose not in CHOICE_RULES:
        raise UserError(f"choice rule {choose!r} is unknown; expected one of {list(CHOICE_RULES)}")
    chosen: dict[str, list[str]] = {}
    rules = {d: dict(choose_with_rules(entries, top, choose, pool, (tables or {}).get(d), (budgets or {}).get(d),
                                       stage.space)) for d, entries in fronts.items()}
    estimating = estimate_epochs > 0 and stage.checkpoint is not None
    # the estimate recalibrates BN as the supernet accuracies are measured
    estimate = {"epochs": estimate_epochs, "lr": estimate_lr,
                **{k: v for k, v in (measure_settings or {}).items() if k in ("calib_batches", "calib_batch_size")}}
    if estimating:
        for d, entries in fronts.items():
            if "measured" in rules[d].values():
                rules[d] = refine_measured(stage, rules[d], choose_with_rules(
                    entries, max(estimate_candidates, top), "measured", pool, (tables or {}).get(d),
                    (budgets or {}).get(d)), top, estimate)
    per_device = {d: list(r) for d, r in rules.items()}
    for device, archs in per_device.items():
        for a in archs:
            chosen.setdefault(a, []).append(device)
    jobs = [Candidate("chosen", arch=a, init=i, devices=ds) for a, ds in chosen.items() for i in inits]
    jobs += [Candidate("baseline", baseline=b, devices=list(fronts)) for b in baselines]
    records = [stage.train(c) for c in jobs]
    for arch in chosen:  # the init a user gets: the better one on validation data (test stays unseen)
        mine = [r for r in records if r["arch"] == arch and r["role"] == "chosen"]
        best = max(mine, key=lambda r: r["val"])
        for r in mine:
            r["deployed"] = r is best
    known = dict(pool)  # supernet accuracies already measured (an accuracy dataset)
    ranked = []
    if ranking > 0:
        import dataclasses

        # without a checkpoint only archs whose supernet accuracy is known can be ranked
        ranking_fronts = fronts if stage.checkpoint is not None else {
            d: [e for e in es if e["arch"] in known] for d, es in fronts.items()}
        short = dataclasses.replace(stage.config, epochs=max(1, ranking_epochs))
        ranked = [stage.train(Candidate("ranking", arch=a), short)
                  for a in pick_ranking_archs(ranking_fronts, list(pool), ranking)]
    stage.save()
    stage.measure(devices, [r["key"] for r in records])
    archs = sorted({r["arch"] for r in records + ranked if r["arch"]})
    sup = (stage.supernet_accuracy(archs, **(measure_settings or {})) if stage.checkpoint is not None
           else {a: known[a] for a in archs if a in known})
    for r in records + ranked:
        if r["arch"] in sup:
            r["supernet_val"] = sup[r["arch"]]
    picked = {}  # per device: the deployed model with the best validation accuracy, what a user takes
    for device in fronts:
        mine = [r for r in records if r["role"] == "chosen" and r.get("deployed") and device in r["devices"]]
        if mine:
            picked[device] = max(mine, key=lambda r: r["val"])["key"]
    summary = {"recipe": stage.config.to_json(), "inits": list(inits), "baselines": list(baselines), "picked": picked,
               "choose": choose, "chosen": per_device, "chosen_by": rules, "budgets": dict(budgets or {}),
               "verdicts": {d: verdicts(list(stage.results["models"].values()), d) for d in (x["name"] for x in devices)}}
    if ranked:
        summary["ranking"] = ranking_summary(ranked, sup)
        summary["ranking"]["epochs"] = max(1, ranking_epochs)
        summary["ranking"]["resolvable"] = resolvable(ranked, len(stage.bundle.val))
        if estimating:
            est = stage.estimate([r["arch"] for r in ranked], **estimate)
            summary["ranking"]["estimate"] = estimate_summary(summary["ranking"], est, estimate_epochs,
                                                              stage.estimate_config(estimate_epochs, estimate_lr).lr)
        plot_ranking(summary["ranking"], stage.out / "ranking.png", max(1, ranking_epochs))
    for d in devices:
        plot_device(list(stage.results["models"].values()), fronts.get(d["name"], []), d["name"],
                    stage.out / f"final_{d['name']}.png")
    stage.results["summary"] = summary
    stage.save()
    return summary
