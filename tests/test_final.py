"""Final training beside baselines (issue 18): extremes, baselines, stand-alone training, the
ranking check, the final stage of ``hwnas run`` and its errors."""

import json
import sys

import numpy as np
import pytest
import torch
import yaml

from hwnas.baselines import BaselineError, make_baseline
from hwnas.cli import main
from hwnas.data_wiring import load_for_space
from hwnas.export import read_metadata
from hwnas.final_stage import (Candidate, FinalStage, choose_archs, pick_ranking_archs, ranking_summary, resolvable,
                               run_final)
from hwnas.final_training import evaluate_model, plain_config, train_model
from hwnas.run_config import RunConfigError, parse_run_config
from search import run_search
from search_space import SearchSpace, Subnet
from tests.test_pipeline import TINY_RUN

SPACE = SearchSpace.from_config(TINY_RUN["space"])
CPU = [{"name": "cpu", "backend": "onnxruntime", "batch_size": 1, "dtype": "fp32", "threads": 1}]


@pytest.fixture(scope="module")
def digits():
    return load_for_space("digits", None, SPACE, device="cpu")


def test_extremes_are_distinct_and_include_each_block_type():
    ext = SPACE.extremes()
    assert list(ext)[:2] == ["largest", "smallest"]
    assert ext["largest"] == SPACE.largest() and ext["smallest"] == SPACE.smallest()
    assert len(set(ext.values())) == len(ext)
    blocks = {layer.block for s in ext["largest_mbconv"].stages for layer in s.layers}
    assert blocks == {"mbconv"}
    # to_params round-trips through Optuna's parameter names
    for arch in ext.values():
        assert SPACE.from_params(SPACE.to_params(arch)) == arch


def test_search_first_population_holds_the_seed_archs():
    from search import Objective

    flops = lambda archs: np.array([SPACE.flops(a) / 1e6 for a in archs], dtype=float)  # noqa: E731
    objectives = [Objective("accuracy", "maximize", lambda archs: np.log1p(flops(archs))),
                  Objective("latency_ms:cpu", "minimize", flops)]
    seeds = list(SPACE.extremes().values())
    study = run_search(SPACE, objectives, 30, sampler="nsga2", seed=0, progress=False, seed_archs=seeds)
    first = [SPACE.from_params(t.params) for t in study.trials[:len(seeds)]]
    assert first == seeds


class _FlopsTable:
    """A latency table stand-in: FLOPs (M) as milliseconds."""

    def predict_many(self, archs):
        return [SPACE.flops(SPACE.parse(a) if isinstance(a, str) else a) / 1e6 for a in archs]


class _DepthTable:
    """A latency table stand-in where only depth costs time (width is free, as at GPU batch 1)."""

    def predict_many(self, archs):
        return [float(sum(len(st.layers) for st in (SPACE.parse(a) if isinstance(a, str) else a).stages))
                for a in archs]


def test_most_flops_within_matches_brute_force():
    import itertools

    from search import most_flops_within

    every = [SPACE.from_genes(g) for g in itertools.product(*(range(len(c)) for _, c in SPACE.gene_choices))]
    table = _DepthTable()
    for budget in sorted(set(table.predict_many(every))):
        fits = [a for a, ms in zip(every, table.predict_many(every)) if ms <= budget]
        best = max(SPACE.flops(a) for a in fits)
        found = most_flops_within(SPACE, table, budget, 2, samples=20, generations=5)
        assert SPACE.flops(found[0]) == best and all(ms <= budget for ms in table.predict_many(found))
    assert most_flops_within(SPACE, table, 0.5) == []  # nothing fits


def test_most_flops_within_finds_the_batch1_capacity_pick():
    """The shipped H100 batch-1 table: within 0.16 ms the search reaches the 2.4-GFLOP arch that beat
    the supernet's favourites trained alone (experiments/results/final/final_cifar_pool.md)."""
    from latency_tables import LatencyTable
    from search import most_flops_within

    space = SearchSpace.from_config("cifar_pool")
    table = LatencyTable.load("cifar_pool_h100_cuda_b1_bf16", space=space, check_machine=False)
    (arch,) = most_flops_within(space, table, 0.16)
    assert table.predict(arch) <= 0.16 and space.flops(arch) >= 2.4e9


def _measured_setting(seed: int, n: int):
    """Sampled archs with random supernet accuracies (the pool), a FLOPs table, the median latency as the
    budget and a front of the first six: (table, ms per arch, budget, pool, front)."""
    rng = np.random.default_rng(seed)
    archs = list(dict.fromkeys(str(SPACE.sample(rng)) for _ in range(n)))
    table = _FlopsTable()
    ms = dict(zip(archs, table.predict_many(archs)))
    budget = float(np.median(list(ms.values())))
    pool = [(a, float(rng.uniform(0.5, 1.0))) for a in archs]
    front = [{"arch": a, "accuracy": acc, "latency_ms": ms[a]} for a, acc in pool[:6]]
    return table, ms, budget, pool, front


def test_choice_rules_measured_within_budget_and_auto():
    table, ms, budget, pool, front = _measured_setting(0, 40)
    archs = list(ms)
    picked = choose_archs(front, 3, "measured", pool, table, budget)
    within = sorted((a for a, _ in pool if ms[a] <= budget), key=lambda a: -dict(pool)[a])
    assert picked == within[:3] and all(ms[a] <= budget for a in picked)
    # auto: measured where the device has a budget, the front spread by latency where it has none;
    # with the space known, one arch of most FLOPs within the budget joins the measured ones
    assert choose_archs(front, 3, "auto", pool, table, budget) == picked
    capacity = choose_archs(front, 1, "capacity", pool, table, budget, SPACE)
    assert len(capacity) == 1 and ms.get(capacity[0], table.predict_many(capacity)[0]) <= budget
    assert choose_archs(front, 3, "auto", pool, table, budget, SPACE) == list(dict.fromkeys(picked + capacity))
    with pytest.raises(Exception, match="'capacity' needs a latency budget"):
        choose_archs(front, 1, "capacity", pool, table, None, SPACE)
    assert choose_archs(front, 3, "auto", pool, table, None) == choose_archs(front, 3, "spread")
    with pytest.raises(Exception, match="needs measured supernet accuracies"):
        choose_archs([{"arch": archs[0], "accuracy": 0.9, "latency_ms": 1.0}], 1, "measured", (), table, budget)


def test_measured_rule_picks_by_the_fine_tuned_estimate_which_the_ranking_check_scores(tmp_path, digits):
    from search_space import Supernet, save_supernet

    torch.manual_seed(0)
    ck = save_supernet(tmp_path / "supernet.pt", Supernet(SPACE), meta={"dataset": "digits"})
    table, _, budget, pool, front = _measured_setting(1, 30)
    stage = FinalStage(SPACE, tmp_path / "final", plain_config(1, 64, lr=0.5), digits, torch.device("cpu"), ck,
                       progress=False)
    summary = run_final(stage, {"cpu": front}, [], top=1, choose="measured", budgets={"cpu": budget},
                        tables={"cpu": table}, baselines=[], inits=["scratch"], ranking=3, ranking_epochs=1, pool=pool,
                        estimate_epochs=1, estimate_candidates=4)
    candidates = choose_archs(front, 4, "measured", pool, table, budget)
    models = json.loads((tmp_path / "final" / "results.json").read_text())["models"]
    estimates = [m for m in models.values() if m["role"] == "estimate"]
    est = {m["arch"]: m["val"] for m in estimates}
    # each candidate trained 1 epoch from its inherited weights at 1/5 of the recipe's lr; no model kept
    assert set(candidates) <= set(est) and all(m["weights"] is None and m["init"] == "inherited" for m in estimates)
    assert all(m["bn_recalibrated"] for m in estimates)  # a few steps leave the supernet's BN statistics behind
    assert all(m["recipe"]["lr"] == pytest.approx(0.1) and m["epochs"] == 1 for m in estimates)
    best = max(candidates, key=lambda a: est[a])
    assert summary["chosen_by"]["cpu"] == {best: "measured+estimate"}
    rank = summary["ranking"]
    assert rank["estimate"]["n"] == rank["n"] >= 3 and rank["estimate"]["epochs"] == 1
    assert rank["estimate"]["lr"] == pytest.approx(0.1)
    assert all(p["estimate_val"] == est[p["arch"]] for p in rank["points"])
    assert (tmp_path / "final" / "ranking.png").stat().st_size > 0


def test_baseline_errors_are_one_line():
    with pytest.raises(BaselineError, match="unknown baseline 'resnet19'"):
        make_baseline("resnet19", SPACE)
    with pytest.raises(BaselineError, match="returned int; expected a torch.nn.Module"):
        make_baseline("builtins:int", SPACE)
    with pytest.raises(BaselineError, match="cannot import"):
        make_baseline("no_such_module_xyz:net", SPACE)
    with pytest.raises(BaselineError, match="timm:not_a_model"):
        make_baseline("timm:not_a_model", SPACE)


def test_resnet18_baseline_has_the_small_image_stem():
    net = make_baseline("resnet18", SPACE)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_standalone_training_raises_accuracy_and_resumes(tmp_path, digits):
    arch = SPACE.largest()
    torch.manual_seed(0)
    net = Subnet(arch, SPACE.block_specs(arch))
    before = evaluate_model(net, digits, torch.device("cpu"), 8)["test"]
    config = plain_config(3, 128, lr=0.05)
    ck = tmp_path / "t.pt"
    train_model(net, digits, config, torch.device("cpu"), ck, progress=False)
    after = evaluate_model(net, digits, torch.device("cpu"), 8)["test"]
    assert after > before + 0.3 and after > 0.6
    # a checkpoint of other settings is refused in one line; the same settings resume (nothing left to do)
    with pytest.raises(Exception, match="different settings"):
        train_model(net, digits, plain_config(4, 128, lr=0.05), torch.device("cpu"), ck, progress=False)
    assert len(train_model(net, digits, config, torch.device("cpu"), ck, progress=False)) == 3


def test_standalone_training_feeds_the_subnets_own_resolution(digits):
    seen = []
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    train_model(net, digits, plain_config(1, 128, lr=0.05), torch.device("cpu"), progress=False, resolution=6)
    assert set(seen) == {(6, 6)}  # as it is scored and exported (8x8 digits resized)


def test_final_stage_trains_times_and_draws_a_callable_baseline(tmp_path, digits, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = FinalStage(SPACE, tmp_path / "final", plain_config(2, 128, lr=0.05), digits, torch.device("cpu"),
                       progress=False)
    front = [{"arch": str(SPACE.smallest()), "accuracy": {"predicted": 0.5}, "latency_ms": {"predicted": 0.01}},
             {"arch": str(SPACE.largest()), "accuracy": {"predicted": 0.9}, "latency_ms": {"predicted": 0.02}}]
    summary = run_final(stage, {"cpu": front}, CPU, top=1, choose="top", baselines=["mynets:tiny"], inits=["scratch"])
    models = json.loads((tmp_path / "final" / "results.json").read_text())["models"]
    roles = sorted(m["role"] for m in models.values())
    assert roles == ["baseline", "chosen"]
    chosen = next(m for m in models.values() if m["role"] == "chosen")
    assert chosen["arch"] == str(SPACE.largest()) and chosen["deployed"]  # the most accurate point of the front
    base = next(m for m in models.values() if m["role"] == "baseline")
    assert base["label"] == "mynets:tiny" and base["latency"]["cpu"]["ms"] > 0 and 0 <= base["test"] <= 1
    v = summary["verdicts"]["cpu"]
    assert len(v) == 1 and v[0]["baseline"] == "mynets:tiny"
    assert v[0]["latency_ratio"] == pytest.approx(chosen["latency"]["cpu"]["ms"] / base["latency"]["cpu"]["ms"], rel=1e-3)
    assert (tmp_path / "final" / "final_cpu.png").stat().st_size > 0
    # resumed: nothing is retrained
    stamp = (tmp_path / "final" / "results.json").stat().st_mtime_ns
    again = FinalStage(SPACE, tmp_path / "final", plain_config(2, 128, lr=0.05), digits, torch.device("cpu"),
                       progress=False)
    assert again.train(Candidate("baseline", baseline="mynets:tiny"))["test"] == base["test"]


def test_ranking_check_spreads_archs_and_computes_tau():
    fronts = {"cpu": [{"arch": f"a{i}", "accuracy": {"predicted": i / 10}} for i in range(5)]}
    pool = [(f"p{i}", i / 20) for i in range(20)]
    picked = pick_ranking_archs(fronts, pool, 8)
    assert picked[:5] == [f"a{i}" for i in range(5)] and len(set(picked)) == 8
    records = [{"arch": f"a{i}", "val": v, "test": v} for i, v in enumerate([0.1, 0.3, 0.2, 0.4, 0.5])]
    s = ranking_summary(records, {f"a{i}": i / 10 for i in range(5)})
    assert s["n"] == 5 and s["kendall_tau"] == pytest.approx(0.8)
    # can the check tell them apart at all? 0.1-0.5 on 100 images: yes; 0.97-0.99 on 144: no (noise)
    assert resolvable(records, 100)["ok"]
    close = [{"val": v} for v in (0.972, 0.979, 0.965, 0.986)]
    r = resolvable(close, 144)
    assert not r["ok"] and r["spread"] == pytest.approx(0.021) and r["val_images"] == 144


def test_final_config_errors():
    with pytest.raises(RunConfigError, match=r"final.baselines\[0\]'.*unknown baseline 'resnet"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "baselines": ["resnet"]}})
    with pytest.raises(RunConfigError, match="final.init"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "init": ["pretrained"]}})
    with pytest.raises(RunConfigError, match="final.ranking_epochs"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "ranking": 4}})
    with pytest.raises(RunConfigError, match=r"final.top': expected >= 1 or null \(export.top\), got 0"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "top": 0}})
    with pytest.raises(RunConfigError, match="final.estimate_epochs': expected a non-negative number, got -1"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "estimate_epochs": -1}})
    with pytest.raises(RunConfigError, match="final.estimate_lr': expected null or a positive number, got 0"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "estimate_lr": 0}})
    with pytest.raises(RunConfigError, match="final.choose"):
        parse_run_config({**TINY_RUN, "final": {"epochs": 2, "choose": "flops"}})


def test_bad_baseline_in_run_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_RUN, "final": {"epochs": 1, "baselines": ["builtin_net"]}}))
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final.baselines[0]" in err[0] and "builtin_net" in err[0]


def test_final_with_a_checkpoint_keeps_the_supernets_train_val_split(tmp_path, monkeypatch):
    from search_space import CheckpointError, Supernet, checkpoint_meta, save_supernet

    ck = save_supernet(tmp_path / "supernet.pt", Supernet(SPACE), meta={"split_seed": 7})
    assert checkpoint_meta(ck)["split_seed"] == 7
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_meta(tmp_path / "missing.pt")
    seeds = []

    def spy(dataset, data, space, *, seed, **kw):
        seeds.append(seed)
        raise RuntimeError("stop after the split")

    monkeypatch.setattr("hwnas.data_wiring.load_for_space", spy)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(TINY_RUN["space"]))
    front = tmp_path / "pareto_cpu.json"
    front.write_text(json.dumps({"format": "hwnas-pareto", "version": 1, "device": "cpu",
                                 "front": [{"arch": str(SPACE.largest()), "accuracy": 0.9}]}))
    for extra, expected in (([], 3), (["--checkpoint", str(ck)], 7)):
        with pytest.raises(RuntimeError, match="stop after the split"):
            main(["final", "--space", str(space_file),
                  "--pareto", f"cpu={front}", "--dataset", "digits", "--seed", "3", "--out", str(tmp_path / "f"), *extra])
        assert seeds[-1] == expected


def test_device_plot_takes_a_hand_written_front_without_latencies(tmp_path):
    from hwnas.final_stage import plot_device

    arch = str(SPACE.largest())
    records = [{"role": "chosen", "arch": arch, "label": arch, "devices": ["cpu"], "deployed": True, "test": 0.9,
                "latency": {"cpu": {"ms": 1.0}}},
               {"role": "baseline", "label": "resnet18", "devices": [], "test": 0.91, "latency": {"cpu": {"ms": 2.0}}}]
    front = [{"arch": arch, "accuracy": 0.9}, {"arch": str(SPACE.smallest()), "accuracy": 0.8, "latency_ms": 0.5}]
    path = plot_device(records, front, "cpu", tmp_path / "final_cpu.png")
    assert path.stat().st_size > 1000
