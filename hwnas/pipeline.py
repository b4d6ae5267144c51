"""``hwnas run``: config -> trained supernet -> latency tables -> predictor -> search ->
verified fronts -> final training beside baselines -> ONNX models -> report. Each stage calls the
library function that the command doing it alone parses its options into
(:mod:`hwnas.supernet_training`, :mod:`hwnas.accuracy`, :mod:`hwnas.predictor_fit`,
:mod:`hwnas.searching`, :mod:`hwnas.search_rounds`, :mod:`hwnas.export`), so there is one
implementation of every step and no command line in between; :class:`hwnas.stages.StageRunner`
makes the whole run resumable."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from hwnas.run_config import SCHEMA, load_run_config, supernet_training
from hwnas.stages import STAGES, StageRunner
from search_space import SearchSpace
from search_space.errors import UserError
from search_space.io import atomic_write_json, check_out_dir

INVOCATIONS = "invocations.json"
LATER_TRAIN_KEYS = ("augment", "time_budget_min", "teacher_dropout", "teacher_cutout", "weight_decay",
                    "ema_decay", "label_smoothing", "logit_scale")  # optional train keys that older runs did not have


def _later_key_at_default(key: str, value) -> bool:
    """Whether ``key`` is one of :data:`LATER_TRAIN_KEYS` and holds its schema default (the same
    type too, so that ``teacher_dropout: 0`` is not taken for an unset ``null``)."""
    default = SCHEMA["train"][key][1] if key in LATER_TRAIN_KEYS else object()
    return value is default or (type(value) is type(default) and value == default)


def build_and_validate(space: SearchSpace, device: dict, latency: dict, seed: int, folder: Path) -> dict:
    """Build (or reuse, with the device's ``table`` key) and validate one configured device's
    latency table on this machine: ``folder/<name>.json`` and its ``<name>_validation`` report.
    A resumed call measures only what is missing (partial builds and validations are saved chunk
    by chunk; finished ones are kept). Returns the stage's summary of the device."""
    from hwnas.run_config import device_backend
    from latency_tables import LatencyTable, build_table, validate_table
    from latency_tables.fingerprint import warn_if_busy

    path = folder / f"{device['name']}.json"
    warn_if_busy(device["backend"])
    if device["table"] is not None:  # reuse a built table: checked against the space, then validated here
        table = LatencyTable.load(device["table"], space=space)
        table.copy_to(path)  # kept, with its validation here, when a resumed stage copied it already
    else:
        table = build_table(space, device_backend(device), path, device=device["name"],
                            calibration_nets=latency["calibration"], seed=seed, restart_changed=True)  # changed config: rebuild
    s = validate_table(LatencyTable.load(path, space=space), n=latency["validate"], out_dir=folder,
                       name=f"{device['name']}_validation", reuse=True)  # resumed: not redone
    return {"table": str(path), "reused": device["table"], "blocks": len(table.data["blocks"]),
            "scores": s["scores"], "repeatability": s["repeatability"], "advice": s["advice"],
            "report": str(folder / s["files"]["md"]), "files": s["files"]}


def _device(cfg: dict) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg["device"] == "auto" else cfg["device"]


class Pipeline:
    """One ``hwnas run``: the stages and where each writes."""

    def __init__(self, config_path: str | Path | None, out: str | Path, redo_from: str | None = None,
                 until: str | None = None, ray_address: str | None = None, overrides: Sequence[str] = ()):
        check_out_dir(out)  # a file in the way, a read-only folder: one line before anything runs
        if redo_from in STAGES and until in STAGES and STAGES.index(until) < STAGES.index(redo_from):
            raise UserError(f"--until {until!r} comes before --from {redo_from!r}: expected a stage at or after "
                            f"{redo_from!r} (order: {', '.join(STAGES)})")
        self.cfg = load_run_config(config_path, overrides)
        # --ray-address, else the config's cluster.ray_address: stages send their work to that cluster
        self.ray_address = ray_address or self.cfg["cluster"]["ray_address"]
        if self.ray_address:
            from search._ray import check_address

            check_address(self.ray_address)  # nothing there: one line in seconds, not a hang
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        if until is not None and until not in STAGES:
            raise UserError(f"--until {until!r}: unknown stage, expected one of {STAGES}")
        self.until = until
        self.space_arg = self._space_arg()
        self.space = SearchSpace.from_config(self.space_arg)
        self.runner = StageRunner(self.out, STAGES, redo_from)
        self.checkpoint = self.out / "supernet" / "supernet.pt"
        self.predictor = self.out / "predictor" / "predictor.pt"

    def _space_arg(self) -> str:
        """Spaces given inline are written next to the run, so every command can read them."""
        space = self.cfg["space"]
        if isinstance(space, dict):
            path = self.out / "space.json"
            atomic_write_json(path, space)
            return str(path)
        return space

    def devices(self) -> list[dict]:
        """Latency devices of the config that this machine can measure (as each backend's registered
        availability check says: CUDA ones need a GPU); on a cluster, all of them (each on the node
        owning it)."""
        from latency_tables.registry import backend_unavailable

        return [d for d in self.cfg["latency"]["devices"]
                if self.ray_address or backend_unavailable(d["backend"]) is None]

    def skipped_devices(self) -> list[str]:
        """Names of the config's devices this machine cannot measure."""
        return [d["name"] for d in self.cfg["latency"]["devices"] if d not in self.devices()]

    def table_path(self, device: dict) -> Path:
        """Where the latency table of one configured device is written."""
        return self.out / "tables" / f"{device['name']}.json"

    # ---- stages --------------------------------------------------------------------------
    def train(self) -> dict:
        """Stage train: the supernet (as `hwnas supernet train`), resumed if interrupted."""
        from hwnas.supernet_training import train_supernet_folder

        c, run_dir = self.cfg["train"], self.checkpoint.parent
        # an interrupted training continues exactly
        config, run = supernet_training(self.cfg, _device(self.cfg), resume=self.checkpoint.exists())
        train_supernet_folder(self.space, run_dir, config, run)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        return {"epochs": last.get("epoch", c["epochs"]), "time_budget_min": c["time_budget_min"], "last_epoch": last}

    def latency(self) -> dict:
        """Stage latency: build (or reuse) and validate each device's table on this machine, or
        with a Ray address on the node owning the device, all devices in parallel."""
        lat = self.cfg["latency"]
        if self.ray_address:
            from hwnas.cluster import build_tables_on_cluster

            summary = build_tables_on_cluster(self.space, self.devices(), lat, self.cfg["seed"], self.out / "tables",
                                              run_id=str(self.out.resolve()))
        else:
            summary = {d["name"]: build_and_validate(self.space, d, lat, self.cfg["seed"], self.out / "tables")
                       for d in self.devices()}
        summary["skipped_devices"] = self.skipped_devices()
        return summary

    def accuracy(self) -> dict:
        """Stage accuracy: measure the fit and held-out accuracy datasets of the supernet."""
        p = self.cfg["predictor"]
        holdout = p["holdout"] if p["holdout"] is not None else max(p["archs"] // 3, 10)
        if self.ray_address:
            return self._accuracy_on_cluster(holdout)
        from hwnas.accuracy import update_accuracy_dataset

        common = dict(device=_device(self.cfg), progress=False, calib_batches=p["calib_batches"],
                      calib_batch_size=p["calib_batch_size"], eval_batch_size=p["eval_batch_size"])
        fit, held_out = self.accuracy_files()
        update_accuracy_dataset(self.checkpoint, p["archs"], fit, seed=self.cfg["seed"], **common)
        update_accuracy_dataset(self.checkpoint, holdout, held_out, seed=self.cfg["seed"] + 1, extremes=False, **common)
        return {"fit": p["archs"], "holdout": holdout}

    def _accuracy_on_cluster(self, holdout: int) -> dict:
        """The accuracy stage's two datasets, each measured in shards by Ray tasks (GPU ones
        where the config's device is CUDA, or auto and the cluster has GPUs)."""
        from hwnas.cluster import measure_accuracy_on_cluster
        from search._ray import _ray

        p, out, seed = self.cfg["predictor"], self.out / "predictor", self.cfg["seed"]
        device = self.cfg["device"]
        gpu = device.startswith("cuda") or device == "auto" and _ray().cluster_resources().get("GPU", 0) > 0
        settings = {"calib_batches": p["calib_batches"], "calib_batch_size": p["calib_batch_size"],
                    "eval_batch_size": p["eval_batch_size"]}
        out.mkdir(parents=True, exist_ok=True)
        shards, measured = self.cfg["cluster"]["shards"], {}
        for name, n, s, extremes in (("fit", p["archs"], seed, True), ("holdout", holdout, seed + 1, False)):
            measured[name] = measure_accuracy_on_cluster(self.space, self.checkpoint, n, out / f"accuracy_{name}.jsonl",
                                                         seed=s, extremes=extremes, gpu=gpu, settings=settings,
                                                         shards=shards)
        return {"fit": p["archs"], "holdout": holdout, "measured_on_cluster": measured, "gpu": gpu}

    def fit_predictor(self) -> dict:
        """Stage predictor: fit the accuracy predictor and score it on the held-out subnets."""
        from hwnas.predictor_fit import evaluate_predictor, fit_predictor
        from predictors import AccuracyDataset

        fit, held_out = self.accuracy_files()
        predictor, _ = fit_predictor(AccuracyDataset.load(fit), self.cfg["predictor"]["model"], seed=self.cfg["seed"])
        predictor.save(self.predictor, {"data": str(fit)})
        metrics, _ = evaluate_predictor(self.predictor, held_out, self.out / "predictor" / "predicted_vs_measured.png")
        return metrics

    def search(self) -> dict:
        """Stage search: multi-objective search over every device with its budget (on a cluster:
        ``cluster.workers`` Ray workers on ``cluster.storage``), the fronts verified on the devices."""
        from hwnas.searching import load_tables
        from search import parse_budget

        s, p, out = self.cfg["search"], self.cfg["predictor"], self.out / "search"
        tables = load_tables([(d["name"], str(self.table_path(d))) for d in self.devices()], self.space)
        names = list(tables)
        budgets = [parse_budget(f"{dev}={ms}ms", names) for dev, ms in s["budgets"].items() if dev in names]
        common = dict(trials=s["trials"], sampler=s["sampler"], seed=self.cfg["seed"], verify_top=self.cfg["verify"]["top"],
                      checkpoint=str(self.checkpoint), eval_device=_device(self.cfg), calib_batches=p["calib_batches"],
                      calib_batch_size=p["calib_batch_size"], progress=False)
        if s["rounds"]:  # measured fronts: the accuracy dataset is known, `queries` more are measured in rounds
            from hwnas.search_rounds import search_in_rounds

            model = p["model"] if p["model"] != "auto" else "gbt"  # rounds refit every round: no CV selection
            search_in_rounds(self.space, tables, budgets, out, rounds=s["rounds"], queries=s["queries"], model=model,
                             accuracy_dataset=[str(path) for path in self.accuracy_files()], **common)
        else:
            from hwnas.searching import search_and_verify

            c = self.cfg["cluster"]
            where = (dict(ray_address=self.ray_address, workers=c["workers"], study=self.study_name(),
                          storage=c["storage"] or str(out / "study.journal")) if self.ray_address  # across the nodes
                     else dict(storage=str(out / "study.journal")))
            out.mkdir(parents=True, exist_ok=True)
            search_and_verify(self.space, tables, budgets, out, predictor=str(self.predictor), **common, **where)
        return {d: str(out / f"pareto_{d}.json") for d in names}

    def study_name(self) -> str:
        """The search's study name in a shared storage (PostgreSQL): one per run folder and search
        inputs, so that runs never mix their trials and a changed config starts a new study."""
        from hwnas.stages import digest

        return f"hwnas-{self.cfg['name']}-{digest([str(self.out.resolve()), self.runner.previous])}"

    def fronts(self) -> dict[str, list[dict]]:
        """Each measurable device's Pareto front entries (``search/pareto_<device>.json``)."""
        return {d["name"]: json.loads((self.out / "search" / f"pareto_{d['name']}.json").read_text())["front"]
                for d in self.devices()}

    def accuracy_files(self) -> list[Path]:
        """The accuracy dataset's two files: the predictor's fit set and its held-out set."""
        return [self.out / "predictor" / f"accuracy_{part}.jsonl" for part in ("fit", "holdout")]

    def measured_accuracies(self) -> dict[str, float]:
        """Every subnet this run measured on its supernet, arch -> validation accuracy: the accuracy
        dataset (fit and held-out parts) and, after a search in rounds, the subnets it measured."""
        from predictors import AccuracyDataset

        measured = {}
        for path in self.accuracy_files():
            if path.exists():
                measured.update((r["arch"], r["accuracy"]) for r in AccuracyDataset.load(path).records)
        rounds = self.out / "search" / "measured.json"
        if rounds.exists():
            measured.update((p["arch"], p["accuracy"]) for p in json.loads(rounds.read_text())["points"]
                            if p["round"] >= 0 and math.isfinite(p.get("accuracy", math.nan)))
        return measured

    def final(self) -> dict:
        """Stage final: the `export.top` archs of each front and the baselines trained alone with one
        recipe, timed on every device; the ranking check (``hwnas.final_stage``)."""
        from hwnas.data_wiring import load_for_space
        from hwnas.final_stage import FinalStage, run_final
        from hwnas.final_training import plain_config

        f, p = self.cfg["final"], self.cfg["predictor"]
        if f["epochs"] == 0:
            return {"skipped": "final.epochs is 0: exports carry supernet weights"}
        device = torch.device(_device(self.cfg))
        bundle = load_for_space(self.cfg["dataset"]["name"], self.cfg["dataset"]["path"], self.space,
                                seed=self.cfg["seed"], device=device)
        config = plain_config(f["epochs"], f["batch_size"], lr=f["lr"], weight_decay=f["weight_decay"],
                              label_smoothing=f["label_smoothing"], logit_scale=f["logit_scale"], augment=f["augment"],
                              seed=self.cfg["seed"])
        stage = FinalStage(self.space, self.out / "final", config, bundle, device, self.checkpoint,
                           on_cluster=bool(self.ray_address))
        pool = list(self.measured_accuracies().items())
        measure = {"calib_batches": p["calib_batches"], "calib_batch_size": p["calib_batch_size"],
                   "eval_batch_size": p["eval_batch_size"]}
        from latency_tables import LatencyTable

        # the `measured` rule judges each device's budget by its table
        tables = {d["name"]: LatencyTable.load(self.table_path(d), space=self.space, check_machine=False)
                  for d in self.devices()}
        budgets = {d: ms for d, ms in self.cfg["search"]["budgets"].items() if d in tables}
        top = self.cfg["export"]["top"] if f["top"] is None else f["top"]
        return run_final(stage, self.fronts(), self.devices(), top=top, choose=f["choose"],
                         budgets=budgets, tables=tables, baselines=f["baselines"], inits=f["init"],
                         ranking=f["ranking"], ranking_epochs=f["ranking_epochs"], pool=pool, measure_settings=measure,
                         estimate_epochs=f["estimate_epochs"], estimate_lr=f["estimate_lr"],
                         estimate_candidates=f["estimate_candidates"])

    def final_results(self) -> dict | None:
        """The final stage's ``results.json`` (None when the stage was skipped)."""
        path = self.out / "final" / "results.json"
        return json.loads(path.read_text()) if path.exists() else None

    def export_entries(self, device: str, front: list[dict]) -> list[dict]:
        """What to export for ``device``: the final stage's choice with its trained models, the one a
        user takes (best validation accuracy) first; without the stage, the front's `export.top`
        most accurate points, as before the stage existed."""
        from hwnas.final_stage import choose_entries

        final = self.final_results()
        if final is None:
            return choose_entries(front, self.cfg["export"]["top"], "top")
        deployed = {r["arch"]: r for r in final["models"].values() if r["role"] == "chosen" and r.get("deployed")}
        on_front = {x["arch"]: x for x in front}
        archs = sorted(final["summary"]["chosen"].get(device, []), key=lambda a: -deployed[a]["val"])
        return [_with_final(on_front.get(a, {"arch": a}), deployed[a], self.out / "final") for a in archs]

    def export(self) -> dict:
        """Stage export: ONNX models of the `export.top` most accurate points of each device's front,
        with their final-trained weights and measured accuracy where the final stage ran."""
        from hwnas.export import export_one, front_requests

        e, out, exported = self.cfg["export"], self.out / "models", {}
        for d in self.devices():
            front = json.loads((self.out / "search" / f"pareto_{d['name']}.json").read_text())
            entries = self.export_entries(d["name"], front["front"])
            top = self.out / "models" / f"top_{d['name']}.json"
            atomic_write_json(top, {**front, "device": d["name"], "front": entries})
            common = dict(checkpoint=str(self.checkpoint), dataset=self.cfg["dataset"]["name"],
                          data=self.cfg["dataset"]["path"], tables=[f"{d['name']}={self.table_path(d)}"],
                          dynamic_batch=e["dynamic_batch"], force=True)
            for request in front_requests(top, out, common):
                export_one(request)
            exported[d["name"]] = [str(out / f"{d['name']}_rank{i:02d}.onnx") for i in range(len(entries))]
        return exported

    def report(self) -> dict:
        """Stage report: the run's markdown report with its plots."""
        from hwnas.run_report import write_run_report

        path = write_run_report(self)
        return {"report": str(path)}

    # ---- driver --------------------------------------------------------------------------
    def run(self) -> Path:
        """Run (or resume) every stage up to ``until``; returns the report path (or the run dir)."""
        cfg = self.cfg
        search = self.out / "search"
        steps = [  # name, inputs, outputs, function, work removed when a finished stage is redone
            ("train", {"space": self.space.fingerprint, "dataset": cfg["dataset"],
                       # keys added later, left unset, must not retrain runs made before they existed
                       "train": {k: v for k, v in cfg["train"].items() if not _later_key_at_default(k, v)},
                       "seed": cfg["seed"]}, [self.checkpoint], self.train, [self.checkpoint.parent]),
            ("latency", {"devices": [d for d in self.devices()], "latency": cfg["latency"]},
             [self.table_path(d) for d in self.devices()], self.latency, []),  # tables: see latency()
            ("accuracy", {k: v for k, v in cfg["predictor"].items() if k != "model"}, self.accuracy_files()[1:],
             self.accuracy, self.accuracy_files()),
            ("predictor", {"model": cfg["predictor"]["model"]}, [self.predictor], self.fit_predictor, []),
            ("search", {"search": cfg["search"], "verify": cfg["verify"]},
             [search / f"pareto_{d['name']}.json" for d in self.devices()], self.search, [search]),
            ("final", {"final": cfg["final"], "top": cfg["export"]["top"]}, [self.out / "final" / "results.json"]
             if cfg["final"]["epochs"] else [], self.final, [self.out / "final"]),
            ("export", {"export": cfg["export"]}, [self.out / "models"], self.export, [self.out / "models"]),
            ("report", {}, [self.out / "report.md"], self.report, []),
        ]
        if self.ray_address:
            self._join_cluster()
        started, status, name = time.strftime("%Y-%m-%d %H:%M:%S"), "failed", ""
        try:
            for name, inputs, outputs, fn, clean in steps:
                if name == "report":  # the report lists this invocation too
                    self._log_invocation(started, "finished")
                self.runner.run(name, inputs, outputs, fn, clean)
                if name == self.until:
                    status = f"stopped after {name} (--until)"
                    return self.out
            status = "finished"
            return self.out / "report.md"
        except KeyboardInterrupt:  # Ctrl-C or a time limit's SIGINT: the next call resumes
            status = f"interrupted in {name}"
            raise
        finally:
            self._log_invocation(started, status if status != "failed" else f"failed in {name}")

    def _join_cluster(self) -> None:
        """Join the Ray cluster and check, before any work, that a node owns every device and that
        the nodes see the files their tasks open by path."""
        from hwnas.cluster import check_devices, check_shared_inputs
        from search import init_ray
        from search._ray import _ray

        init_ray(self.ray_address)
        check_devices(self.devices())
        nodes = [n for n in _ray().nodes() if n.get("Alive")]
        print(f"Ray cluster at {self.ray_address}: {len(nodes)} nodes, devices "
              f"{', '.join(d['name'] for d in self.devices())} each on its own node", file=sys.stderr)
        storage = self.cfg["cluster"]["storage"]  # what Ray tasks open by path: a file study, dataset.path
        check_shared_inputs(None if self.cfg["search"]["rounds"] else storage or str(self.out / "search" / "study.journal"),
                            "cluster.storage" if storage else "cluster.storage is null, so the study", self.cfg["dataset"]["path"])

    def _log_invocation(self, started: str, status: str) -> None:
        """Record this ``hwnas run`` in ``invocations.json`` (a run split over several calls, or
        resumed after a failure, shows as several entries)."""
        path = self.out / INVOCATIONS
        log = json.loads(path.read_text()) if path.exists() else []
        entry = {"started": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S"), "status": status,
                 "ran": list(self.runner.ran), "skipped": list(self.runner.skipped)}
        if log and log[-1]["started"] == started:
            log[-1] = entry  # the report's own update of this invocation
        else:
            log.append(entry)
        atomic_write_json(path, log)


def _with_final(entry: dict, record: dict, final_dir: Path) -> dict:
    """A front entry (or a bare ``{"arch": ...}`` for a chosen arch off the front) with its
    final-trained model: supernet and stand-alone accuracy, and the weights to export."""
    acc = entry.get("accuracy")
    acc = dict(acc) if isinstance(acc, dict) else {} if acc is None else {"predicted": acc}
    if "measured" not in acc and "supernet_val" in record:
        acc["measured"] = record["supernet_val"]
    final = {k: record[k] for k in ("val", "test", "init", "epochs")}
    final["weights"] = str((final_dir / record["weights"]).resolve())
    return {**entry, "accuracy": {**acc, "standalone_test": record["test"]}, "final": final}
