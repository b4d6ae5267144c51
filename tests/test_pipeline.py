"""``hwnas run`` end to end on a reduced quickstart, resume, --from, and config errors."""

import re
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from hwnas.cli import main
from hwnas.run_config import RunConfigError, load_run_config, parse_run_config
from search_space import SearchSpace

TINY_RUN = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "space": {
        "name": "tiny-digits", "in_channels": 1, "num_classes": 10, "resolutions": [8],
        "stem": {"channels": 8, "kernel": 3, "stride": 1},
        "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "resnet"], "kernels": [3],
                     "expansions": {"mbconv": [2], "resnet": [1]}},
        "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 16, "stride": 2, "depths": [1]}],
    },
    "dataset": {"name": "digits"},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "num_random": 1},
    "latency": {"devices": [{"name": "cpu", "backend": "onnxruntime", "threads": 1},
                            {"name": "gpu", "backend": "cuda", "batch_size": 1, "dtype": "bf16"}],
                "calibration": 6, "validate": 6},
    "predictor": {"archs": 30, "model": "gbt"},
    "search": {"trials": 150, "sampler": "nsga2", "budgets": {"cpu": 50}},
    "verify": {"top": 2},
    "export": {"top": 1, "dynamic_batch": True},
    "final": {"epochs": 2, "batch_size": 128, "lr": 0.05, "baselines": ["largest"], "ranking": 3, "ranking_epochs": 1},
}


@pytest.fixture
def no_command_line(monkeypatch):
    """Stages call the library, never the command line: ``hwnas.cli.main`` raises when called (this
    module's own ``main``, bound at import, still runs ``hwnas run``)."""
    def refuse(argv=None):
        raise AssertionError(f"a stage ran 'hwnas {' '.join(map(str, argv or []))}' through hwnas.cli.main")

    monkeypatch.setattr("hwnas.cli.main", refuse)


def test_run_end_to_end_then_resume(tmp_path, capsys, no_command_line):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))
    out = tmp_path / "run"
    # an interrupted run: stop after the predictor stage
    assert main(["run", "--config", str(cfg), "--out", str(out), "--until", "predictor"]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert set(first) == {"train", "latency", "accuracy", "predictor"}
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    second = json.loads((out / "manifest.json").read_text())
    for stage in first:  # finished stages were not redone
        assert second[stage]["finished"] == first[stage]["finished"]
    captured = capsys.readouterr()
    assert "up to date, skipped" in captured.err
    assert "cpu (onnxruntime, batch 1, fp32, budget 50 ms): " in captured.out and "cpu_rank00.onnx" in captured.out
    assert "gpu: not measured here" in captured.out
    assert "ranking check: Kendall tau " in captured.out and "(fine-tuned estimate)" in captured.out
    report = (out / "report.md").read_text()
    assert "## Device `cpu`" in report and "| 0 | `r8/" in report
    # the report says the run took two calls: the first stopped by --until, the second resumed it
    assert "## Invocations (2 `hwnas run` calls)" in report
    runs = json.loads((out / "invocations.json").read_text())
    assert [r["status"] for r in runs] == ["stopped after predictor (--until)", "finished"]
    assert runs[1]["skipped"] == ["train", "latency", "accuracy", "predictor"] and "search" in runs[1]["ran"]
    assert "gpu" in report  # the CUDA device is reported as not measured here
    front = json.loads((out / "search" / "pareto_cpu.json").read_text())
    assert front["front"]
    onnx_file = out / "models" / "cpu_rank00.onnx"
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input"
    # the final stage trained the exported arch alone: its weights and measured accuracy are what ships
    from hwnas.export import read_metadata

    meta = read_metadata(onnx_file)
    final = json.loads((out / "final" / "results.json").read_text())
    deployed = {m["arch"]: m for m in final["models"].values() if m["role"] == "chosen" and m.get("deployed")}
    assert meta["weights"] == "final-trained" and meta["arch"] in deployed
    assert float(meta["final.test"]) == pytest.approx(deployed[meta["arch"]]["test"])
    top = json.loads((out / "models" / "top_cpu.json").read_text())["front"][0]
    assert top["accuracy"]["standalone_test"] == pytest.approx(deployed[meta["arch"]]["test"])
    assert "## Final training: chosen models beside the baselines" in report and "`largest`" in report
    assert final["summary"]["ranking"]["n"] == 3 and (out / "final" / "ranking.png").exists()
    # final.choose auto: the measured pick and the arch of most FLOPs within the cpu budget (50 ms)
    from latency_tables import LatencyTable
    from search import most_flops_within

    space = SearchSpace.from_config(TINY_RUN["space"])
    table = LatencyTable.load(out / "tables" / "cpu.json", space=space)
    capacity = str(most_flops_within(space, table, 50.0)[0])
    assert capacity in final["summary"]["chosen"]["cpu"]
    # measured (re-ranked by the fine-tuned estimate) wins a tie
    assert final["summary"]["chosen_by"]["cpu"][capacity] in ("capacity", "measured+estimate")
    assert "measured+estimate" in final["summary"]["chosen_by"]["cpu"].values()
    assert final["summary"]["ranking"]["estimate"]["n"] == final["summary"]["ranking"]["n"]
    assert "(cpu: measured" in report or "(cpu: capacity" in report  # the report says which rule chose each
    assert "| supernet val | estimate val | val | test |" in report  # and the estimate it picked by
    # --from redoes that stage and the later ones only
    assert main(["run", "--config", str(cfg), "--out", str(out), "--from", "export"]) == 0
    third = json.loads((out / "manifest.json").read_text())
    assert third["search"]["finished"] == second["search"]["finished"]
    assert third["export"]["finished"] >= second["export"]["finished"]
    # a device with `table:` reuses that table (checked against the space) instead of building one
    reuse = {**TINY_RUN, "latency": {**TINY_RUN["latency"], "devices": [
        {"name": "cpu", "backend": "onnxruntime", "threads": 1, "table": str(out / "tables" / "cpu.json")}]},
        "search": {**TINY_RUN["search"], "budgets": {}}}
    cfg.write_text(yaml.safe_dump(reuse))
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "reuse"), "--until", "latency"]) == 0
    copied = json.loads((tmp_path / "reuse" / "tables" / "cpu.json").read_text())
    assert copied["blocks"] == json.loads((out / "tables" / "cpu.json").read_text())["blocks"]
    summary = json.loads((tmp_path / "reuse" / "manifest.json").read_text())["latency"]["summary"]
    assert summary["cpu"]["reused"] == str(out / "tables" / "cpu.json") and summary["cpu"]["scores"]
    assert summary["cpu"]["blocks"] == len(copied["blocks"]) > 0


def test_bundled_quickstart_config_is_valid():
    cfg = load_run_config(None)
    assert cfg["dataset"]["name"] == "digits" and cfg["device"] == "cpu"


EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_configs_in_experiments_load(path):
    """The configs the README and the write-ups point users to stay valid (spaces and run configs)."""
    if path.name.startswith("space_"):
        space = SearchSpace.from_config(path)
        assert space.flops(space.largest()) >= space.flops(space.smallest()) > 0
    else:
        cfg = load_run_config(path)
        assert cfg["name"] and cfg["latency"]["devices"]


@pytest.mark.parametrize("patch,needle", [
    ({"search": {"trials": "many"}}, "'search.trials': expected int"),
    ({"search": {"budgets": {"tpu": 1}}}, "'search.budgets.tpu': unknown device"),
    ({"train": {"epoch": 3}}, "'train.epoch': unknown key"),
    ({"latency": {"devices": [{"backend": "onnxruntime"}]}}, "'latency.devices[0].name': missing"),
    ({"latency": {"devices": [{"name": "x", "backend": "tensorrt"}]}}, "'latency.devices[0].backend'"),
    ({"device": "tpu"}, "'device'"),
    ({"train": {"students": "all"}}, "'train.students': expected one of"),
    ({"train": {"augment": "mixup"}}, "'train.augment': expected null or one of"),
    ({"train": {"time_budget_min": 0}}, "'train.time_budget_min': expected null or a positive number"),
    ({"train": {"teacher_dropout": 1.5}}, "'train.teacher_dropout': expected null or a number in [0, 1), got 1.5"),
    ({"train": {"teacher_cutout": "yes"}}, "'train.teacher_cutout': expected bool"),
    ({"train": {"ema_decay": 1.5}}, "'train.ema_decay': expected null or a number in (0, 1), got 1.5"),
    ({"train": {"weight_decay": -1e-3}}, "'train.weight_decay': expected a number >= 0, got -0.001"),
    ({"train": {"label_smoothing": 1}}, "'train.label_smoothing': expected a number in [0, 1), got 1"),
    ({"train": {"logit_scale": 0}}, "'train.logit_scale': expected a positive number, got 0"),
    ({"latency": {"devices": [{"name": "x", "table": "no_such_table"}]}}, "'latency.devices[0].table': 'no_such_table' not found"),
    ({"cluster": {"workers": 0}}, "'cluster.workers': expected a positive integer, got 0"),
    ({"cluster": {"shards": 0}}, "'cluster.shards': expected null or a positive integer, got 0"),
    ({"cluster": {"ray_address": 6379}}, "'cluster.ray_address': expected str or null, got 6379"),
    ({"cluster": {"nodes": 3}}, "'cluster.nodes': unknown key"),
])
def test_run_config_errors_name_the_key(patch, needle):
    with pytest.raises(RunConfigError) as e:
        parse_run_config({**TINY_RUN, **patch})
    assert needle in str(e.value)


def test_run_cli_errors_exit_2(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_RUN, "search": {"sampler": 3}}))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "search.sampler" in capsys.readouterr().err
    # a stage that fails: one clear line, exit 2, and the failure is logged with its stage
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({**TINY_RUN, "dataset": {"name": "cifar10-jpeg", "path": str(tmp_path / "nope.npz")}}))
    assert main(["run", "--config", str(missing), "--out", str(tmp_path / "f")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert json.loads((tmp_path / "f" / "invocations.json").read_text())[-1]["status"] == "failed in train"


def test_stages_pass_the_dataset(tmp_path, monkeypatch):
    """Every stage that reads images gets the config's dataset and path (export recalibrates BN)."""
    import hwnas.pipeline as pipeline

    run = {**TINY_RUN, "dataset": {"name": "cifar10-jpeg", "path": "/data/cifar10_jpeg.npz"},
           "export": {"top": 1, "dynamic_batch": False},
           "predictor": {**TINY_RUN["predictor"], "calib_batches": 5, "calib_batch_size": 1024}}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run))
    p = pipeline.Pipeline(cfg, tmp_path / "run")
    (p.out / "search").mkdir(parents=True)
    (p.out / "search" / "pareto_cpu.json").write_text(json.dumps({"front": [{"arch": "a", "accuracy": 0.5}]}))
    exported, measured, trained = [], [], []
    monkeypatch.setattr("hwnas.export.export_one", exported.append)
    monkeypatch.setattr("hwnas.accuracy.update_accuracy_dataset", lambda *a, **kw: measured.append(kw))
    monkeypatch.setattr("hwnas.supernet_training.train_supernet_folder", lambda *a: trained.append(a[-1]))
    p.export()
    (tmp_path / "run" / "supernet").mkdir()
    (tmp_path / "run" / "supernet" / "metrics.jsonl").write_text("")
    p.train()
    p.accuracy()
    assert len(exported) == 1 and len(trained) == 1 and len(measured) == 2
    for kw in measured:  # the measurement settings of the config; the dataset is the checkpoint's
        assert kw["calib_batches"] == 5 and kw["calib_batch_size"] == 1024
    for settings in (exported[0], trained[0]):
        assert (settings.dataset, settings.data) == ("cifar10-jpeg", "/data/cifar10_jpeg.npz")
    assert exported[0].arch == "a" and exported[0].out == p.out / "models" / "cpu_rank00.onnx" and exported[0].force


BUDGETED_TRAIN = {"time_budget_min": 2.5, "augment": "crop_flip_cutout", "teacher_dropout": 0.3, "teacher_cutout": True,
                  "weight_decay": 2e-3, "ema_decay": 0.999, "label_smoothing": 0.2, "logit_scale": 0.125}


def test_train_stage_passes_budget_and_augment(tmp_path, monkeypatch):
    """train.time_budget_min replaces the epochs, train.augment, train.teacher_dropout,
    train.teacher_cutout and train.ema_decay are passed on; unset, none is. train.weight_decay,
    train.label_smoothing and train.logit_scale are always passed."""
    import hwnas.pipeline as pipeline

    calls = []
    monkeypatch.setattr("hwnas.supernet_training.train_supernet_folder",
                        lambda space, out, config, run: calls.append((config, run)))
    for extra in ({}, BUDGETED_TRAIN):
        cfg = tmp_path / f"run{len(calls)}.yaml"
        cfg.write_text(yaml.safe_dump({**TINY_RUN, "train": {**TINY_RUN["train"], **extra}}))
        p = pipeline.Pipeline(cfg, tmp_path / f"run{len(calls)}")
        (p.checkpoint.parent).mkdir(parents=True)
        (p.checkpoint.parent / "metrics.jsonl").write_text(json.dumps({"epoch": 7}) + "\n")
        assert p.train()["epochs"] == 7  # what was trained, also when a budget chose it
    (plain, plain_run), (budget, budget_run) = calls
    assert plain_run.time_budget_min is None and budget_run.time_budget_min == 2.5
    assert plain.epochs == 2 and plain_run.eval_every == 1 and plain_run.dataset == "digits" and not plain_run.resume
    assert plain.augment is None and budget.augment == "crop_flip_cutout"
    assert plain.teacher_dropout is None and budget.teacher_dropout == 0.3
    assert not plain.teacher_cutout and budget.teacher_cutout
    assert plain.ema_decay is None and budget.ema_decay == 0.999
    assert (plain.weight_decay, budget.weight_decay) == (0.0005, 0.002)
    assert (plain.label_smoothing, budget.label_smoothing) == (0.1, 0.2)
    assert (plain.logit_scale, budget.logit_scale) == (1.0, 0.125)
    p.checkpoint.write_bytes(b"")
    p.train()
    assert calls[-1][1].resume  # an interrupted training continues


def test_supernet_train_args_are_the_commands_options():
    """The config's training as `hwnas supernet train` arguments (experiments/bench_ddp.py launches
    them under torchrun): the options the train stage sets, and the command parses them."""
    from hwnas.cli import build_parser
    from hwnas.run_config import supernet_train_args

    plain, budget = (supernet_train_args(parse_run_config({**TINY_RUN, "space": "cifar", "train": {
        **TINY_RUN["train"], **extra}}), "cifar", "out", "cpu") for extra in ({}, BUDGETED_TRAIN))
    assert plain[:2] == ["supernet", "train"] and plain[plain.index("--dataset") + 1] == "digits"
    assert "--epochs" in plain and "--time-budget-min" not in plain and "--augment" not in plain
    assert "--teacher-dropout" not in plain and budget[budget.index("--teacher-dropout") + 1] == "0.3"
    assert "--epochs" not in budget and budget[budget.index("--time-budget-min") + 1] == "2.5"
    assert budget[budget.index("--augment") + 1] == "crop_flip_cutout"
    assert "--teacher-cutout" in budget and "--teacher-cutout" not in plain
    assert "--ema-decay" not in plain and budget[budget.index("--ema-decay") + 1] == "0.999"
    assert plain[plain.index("--weight-decay") + 1] == "0.0005" and budget[budget.index("--weight-decay") + 1] == "0.002"
    assert plain[plain.index("--label-smoothing") + 1] == "0.1" and budget[budget.index("--label-smoothing") + 1] == "0.2"
    assert plain[plain.index("--logit-scale") + 1] == "1.0" and budget[budget.index("--logit-scale") + 1] == "0.125"
    args = build_parser(["supernet"]).parse_args(budget)
    assert (args.time_budget_min, args.teacher_cutout, args.eval_every, args.out) == (2.5, True, 1, "out")


def test_changed_config_redoes_stages_without_stale_work(tmp_path, capsys):
    """A finished run whose training changes is redone from scratch (accuracy datasets of the old
    checkpoint and the old study are not resumed); a changed predictor model redoes only the
    stages from the predictor on."""
    run = {**TINY_RUN, "latency": {**TINY_RUN["latency"], "devices": TINY_RUN["latency"]["devices"][:1]}}
    cfg, out = tmp_path / "run.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(run))
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    header = lambda: json.loads((out / "predictor" / "accuracy_fit.jsonl").read_text().splitlines()[0])
    old_hash = header()["checkpoint_hash"]
    blocks = lambda: json.loads((out / "tables" / "cpu.json").read_text())["blocks"]
    old_blocks = blocks()
    cfg.write_text(yaml.safe_dump({**run, "train": {**run["train"], "epochs": 3}}))
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    second = json.loads((out / "manifest.json").read_text())
    assert header()["checkpoint_hash"] != old_hash
    assert blocks() == old_blocks  # the table's settings did not change: resumed, not re-measured
    assert "150 completed trials" in (out / "search" / "summary.md").read_text()  # a new study, not the old one resumed
    cfg.write_text(yaml.safe_dump({**run, "train": {**run["train"], "epochs": 3},
                                   "predictor": {**run["predictor"], "model": "mlp"}}))
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "accuracy: up to date, skipped" in err and "[4/8] predictor: done" in err
    assert json.loads((out / "manifest.json").read_text())["search"]["finished"] >= second["search"]["finished"]


def test_later_train_keys_at_default_keep_old_runs_fingerprint():
    """Train keys added after runs existed (weight_decay, teacher_cutout, ...) leave the train
    stage's fingerprint alone at their default, so finished runs are not retrained; set, they count."""
    from hwnas.pipeline import _later_key_at_default

    assert _later_key_at_default("weight_decay", 5e-4) and not _later_key_at_default("weight_decay", 2e-3)
    assert _later_key_at_default("teacher_cutout", False) and not _later_key_at_default("teacher_cutout", True)
    assert not _later_key_at_default("epochs", 10)  # an original key always counts


def test_run_with_search_rounds_makes_measured_fronts(tmp_path, no_command_line):
    """`search.rounds`: the accuracy dataset is known, `queries` more subnets are measured on the
    supernet in rounds, and the fronts hold measured subnets only."""
    run = {**TINY_RUN, "latency": {**TINY_RUN["latency"], "devices": TINY_RUN["latency"]["devices"][:1]},
           "search": {"trials": 60, "sampler": "nsga2", "rounds": 2, "queries": 8, "budgets": {"cpu": 50}},
           "final": {"epochs": 0}}
    cfg, out = tmp_path / "run.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(run))
    assert main(["run", "--config", str(cfg), "--out", str(out), "--until", "search"]) == 0
    measured = json.loads((out / "search" / "measured.json").read_text())
    assert measured["run"]["mode"] == "rounds" and measured["run"]["known"] >= 30
    assert 0 < measured["run"]["measured"] <= 8
    points = {p["arch"] for p in measured["points"]}
    from predictors import AccuracyDataset

    known = {r["arch"] for part in ("fit", "holdout")
             for r in AccuracyDataset.load(out / "predictor" / f"accuracy_{part}.jsonl").records}
    assert measured["run"]["known"] == len(known)  # the held-out subnets count too: every measurement is used
    assert len(points) == len(known) + measured["run"]["measured"]
    front = json.loads((out / "search" / "pareto_cpu.json").read_text())["front"]
    assert front and all(e["arch"] in points for e in front)
    from hwnas.pipeline import Pipeline
    from hwnas.run_report import console_summary

    pipe = Pipeline(cfg, out)
    # what the final stage's `measured` rule picks from: every subnet measured on the supernet, the rounds' too
    assert set(pipe.measured_accuracies()) == points
    summary = console_summary(pipe)  # the terminal says what the front's accuracies are
    lo, hi = min(e["accuracy"]["measured"] for e in front), max(e["accuracy"]["measured"] for e in front)
    assert f"accuracy {lo:.4f}-{hi:.4f} (measured on the supernet)" in summary
    from hwnas.run_report import rounds_section

    section = "\n".join(rounds_section(out))  # the report states what the rounds measured and what it cost
    assert "## Search in rounds" in section and f"{measured['run']['measured']} subnets measured" in section
    limit = measured["run"]["budgets_ms"]["latency:cpu"]
    best = max(p["accuracy"] for p in measured["points"] if p["latency:cpu"] <= limit)
    assert f"Within every budget (latency:cpu <= {limit} ms)" in section and f"the most accurate {best:.4f}" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(measured["log"])  # a row per round (the seed batch is round 0)


def test_export_follows_the_final_stage_choice(tmp_path):
    """Exports are the final stage's chosen archs (also those off the front, as the `measured` rule
    picks them), the one with the best validation accuracy first; without the stage, the front's top."""
    import hwnas.pipeline as pipeline

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))
    p = pipeline.Pipeline(cfg, tmp_path / "run")
    front = [{"arch": "a", "accuracy": {"predicted": 0.9}}, {"arch": "b", "accuracy": {"predicted": 0.5}}]
    assert [e["arch"] for e in p.export_entries("cpu", front)] == ["a"]  # export.top 1 of the front
    models = {"k1": {"role": "chosen", "arch": "a", "deployed": True, "val": 0.7, "test": 0.71, "init": "scratch",
                     "epochs": 2, "weights": "models/k1.pt"},
              "k2": {"role": "chosen", "arch": "off", "deployed": True, "val": 0.8, "test": 0.79, "init": "scratch",
                     "epochs": 2, "weights": "models/k2.pt", "supernet_val": 0.6}}
    (p.out / "final").mkdir()
    (p.out / "final" / "results.json").write_text(json.dumps({"models": models,
                                                               "summary": {"chosen": {"cpu": ["a", "off"]}}}))
    entries = p.export_entries("cpu", front)
    assert [e["arch"] for e in entries] == ["off", "a"]
    assert entries[0]["accuracy"] == {"measured": 0.6, "standalone_test": 0.79}
    assert entries[1]["accuracy"] == {"predicted": 0.9, "standalone_test": 0.71}
    assert entries[0]["final"]["weights"].endswith("models/k2.pt")


class Killed(Exception):
    pass


def test_latency_stage_resumes_without_redoing_work(tmp_path, monkeypatch, capsys):
    """The latency stage killed mid-build, then mid-validation, resumes where it stopped; once
    finished it measures nothing again, validation included; progress shows as plain log lines."""
    from hwnas.pipeline import Pipeline
    from latency_tables.backends import Backend

    fast = dict(min_rounds=2, max_rounds=3, round_ms=0.3, warmup_ms=1.0, min_runs_per_round=2)
    run = {**TINY_RUN, "latency": {"devices": [{"name": "cpu", "backend": "onnxruntime", "options": fast}],
                                   "calibration": 6, "validate": 6}}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run))
    calls, die_at, real = [], [None], Backend.time_timers  # every timing: blocks, and nets from their exports

    def spy(self, timers):
        if len(calls) == die_at[0]:
            raise Killed
        calls.append(len(timers))
        return real(self, timers)

    monkeypatch.setattr(Backend, "time_timers", spy)
    pipe = Pipeline(cfg, tmp_path / "run")
    block_calls = -(-len(pipe.space.unique_block_specs()) // 40)

    def latency(die):
        calls.clear()
        die_at[0] = die
        return Pipeline(cfg, tmp_path / "run").latency()

    with pytest.raises(Killed):  # blocks and the first calibration pass done
        latency(block_calls + 1)
    with pytest.raises(Killed):  # calibration passes 2 and 3, validation pass 1
        latency(3)
    assert calls == [6, 6, 6]
    summary = latency(None)
    assert calls == [6, 6]  # only validation passes 2 and 3
    assert summary["cpu"]["blocks"] == len(pipe.space.unique_block_specs())
    assert latency(None) == summary and calls == []  # finished: nothing measured again
    err = capsys.readouterr().err
    assert "cpu: validation nets, pass 2/3: 6/6" in err and "finished earlier" in err


def test_run_with_a_ray_address_with_nothing_there_fails_in_seconds(tmp_path, capsys):
    import time

    cfg, out = tmp_path / "run.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump({**TINY_RUN, "cluster": {"ray_address": "127.0.0.1:1"}}))
    start = time.monotonic()
    for extra in ([], ["--ray-address", "127.0.0.1:1"]):  # the config's address, or the option's
        assert main(["run", "--config", str(cfg), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "cannot reach a Ray cluster at '127.0.0.1:1'" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - start < 20 and not out.exists()  # refused before the run folder is made


def test_set_overrides_config_keys_and_refuses_bad_ones(tmp_path):
    """`hwnas run --set KEY=VALUE` changes one key of the config (VALUE read as YAML) before
    validation; a malformed item, a key under a scalar or an unknown key is one line, exit 2."""
    cfg = load_run_config(None, ["train.epochs=3", "train.students=families", "final.baselines=[largest]",
                                 "predictor.holdout=null"])
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["students"] == "families"
    assert cfg["final"]["baselines"] == ["largest"] and cfg["predictor"]["holdout"] is None
    assert load_run_config(None)["train"]["students"] != "families"  # the file itself is untouched
    for bad, words in (("train.epochs", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                       ("seed.x=1", "config key 'seed' is 0, not a mapping"),
                       ("train.epoch=3", "config key 'train.epoch': unknown key"),
                       ("train.epochs=[1", "not valid YAML")):
        with pytest.raises(RunConfigError, match=re.escape(words)):
            load_run_config(None, [bad])
    rc = main(["run", "--out", str(tmp_path / "r"), "--set", "train.epoch=3"])
    assert rc == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text("")  # not a mapping: the config's own one-line error, not a traceback from --set
    with pytest.raises(RunConfigError, match="expected a mapping, got None"):
        load_run_config(empty, ["train.epochs=3"])


def test_an_interrupted_run_is_logged_as_interrupted(tmp_path, monkeypatch):
    """Ctrl-C (or a time limit's SIGINT) in a stage: invocations.json says 'interrupted in STAGE',
    not 'failed', so a reader knows the next call resumes it."""
    import hwnas.pipeline as pipeline

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("hwnas.supernet_training.train_supernet_folder", stop)
    with pytest.raises(KeyboardInterrupt):
        pipeline.Pipeline(cfg, tmp_path / "run").run()
    runs = json.loads((tmp_path / "run" / "invocations.json").read_text())
    assert [r["status"] for r in runs] == ["interrupted in train"]
