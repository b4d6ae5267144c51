"""Predictors: encoding inverse, ranking quality on a synthetic target, save/load, space checks,
spread sampling, the resumable accuracy-dataset builder and the ``hwnas predictor`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from hwnas.cli import main
from hwnas.datasets import iterate_batches, load_dataset
from predictors import (AccuracyDataset, AccuracyDatasetError, PredictorError, build_accuracy_dataset,
                        composition_features, cost_features, decode_encoding, fit_target, inverse_target, layer_features, load_predictor, make_features, make_predictor,
                        rank_metrics, sample_archs_spread, select_predictor)
from search_space import SearchSpace, Supernet, checkpoint_hash, save_supernet

# A space for 8x8 one-channel digits: small enough to evaluate dozens of subnets in seconds.
DIGITS_SPACE = {
    "name": "digits-tiny", "in_channels": 1, "num_classes": 10, "resolutions": [8],
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "fused_mbconv", "pconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [2, 4], "fused_mbconv": [1, 2], "pconv": [1, 2], "resnet": [0.5, 1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 24, "stride": 2, "depths": [1, 2]}],
}
KINDS = ["mlp", "gbt", "gp", "blend"]
FAST = {"mlp": {"steps": 600}, "gbt": {"members": 3}, "gp": {}}  # test-sized settings
FAST["blend"] = {"members": dict(FAST)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine is shared: oversubscribed OpenMP threads run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar():
    return SearchSpace.from_config("cifar")


@pytest.fixture(scope="module")
def synthetic(cifar):
    """Archs and a synthetic accuracy with the usual shape: saturating in log FLOPs, plus an
    effect of each block type's share of each stage, plus measurement noise."""
    archs = sample_archs_spread(cifar, 500, np.random.default_rng(0))
    log_flops = np.log([cifar.flops(a) for a in archs])
    size = (log_flops - log_flops.min()) / np.ptp(log_flops)
    blocks = cifar.config.stages[0].blocks
    share = np.array([[[sum(l.block == b for l in s.layers) / s.depth for b in blocks] for s in a.stages]
                      for a in archs])
    effect = np.random.default_rng(1).normal(0, 0.01, share.shape[1:])
    clean = 0.95 - 0.25 * np.exp(-3 * size) + (share * effect).sum((1, 2))
    y = clean + np.random.default_rng(2).normal(0, 0.002, len(archs))
    return cifar.encode_many(archs), y


@pytest.mark.parametrize("name", ["cifar", "imagenet", "digits"])
def test_decode_and_cost_features_match_the_space(name):
    space = SearchSpace.from_config(DIGITS_SPACE if name == "digits" else name)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(200)] + [space.largest(), space.smallest()]
    X = space.encode_many(archs)
    assert decode_encoding(space, X) == archs
    expected = []  # the slow, obvious way: sum the block specs of each stage
    for a in archs:
        specs, row, k = space.block_specs(a), [], 1
        for s in a.stages:
            row += [sum(b.flops() for b in specs[k:k + s.depth]), sum(b.params() for b in specs[k:k + s.depth])]
            k += s.depth
        expected.append(row + [space.flops(a), space.params(a)])
    np.testing.assert_allclose(cost_features(space, X), np.log(expected), rtol=1e-6)
    # Per layer slot: the block specs one by one, (flops, params) per slot, zeros past the depth.
    layers = []
    for a in archs:
        specs, row, k = space.block_specs(a), [], 1
        for i, s in enumerate(a.stages):
            for j in range(max(space.config.stages[i].depths)):
                b = specs[k + j] if j < s.depth else None
                row += [b.flops(), b.params()] if b else [0, 0]
            k += s.depth
        layers.append(row)
    np.testing.assert_allclose(np.expm1(layer_features(space, X)), layers, rtol=1e-5)
    assert make_features(space, X, "layers").shape == (len(X), X.shape[1] + len(expected[0]) + len(layers[0]))
    # Block mix and agreement with the sandwich anchors, counted from the archs themselves.
    blocks = sorted({b for st in space.config.stages for b in st.blocks})
    big, small = space.largest(), space.smallest()
    mix = []
    for a in archs:
        row, total = [], np.zeros(len(blocks) + 2)
        for i, s in enumerate(a.stages):
            anchor = lambda ref, j: ref.stages[i].layers[min(j, ref.stages[i].depth - 1)]
            counts = np.array([sum(l.block == b for l in s.layers) for b in blocks]
                              + [sum(l == anchor(ref, j) for j, l in enumerate(s.layers)) for ref in (big, small)])
            row += list(counts / s.depth)
            total += counts
        mix.append(row + list(total / sum(s.depth for s in a.stages)))
    np.testing.assert_allclose(composition_features(space, X), mix, rtol=1e-6)
    assert make_features(space, X, "composition").shape == (len(X), X.shape[1] + len(expected[0]) + len(layers[0])
                                                           + len(mix[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_predictor_ranks_synthetic_target(kind, cifar, synthetic):
    X, y = synthetic
    pred = make_predictor(kind, cifar, **FAST[kind]).fit(X[:350], y[:350])
    mean, std = pred.predict(X[350:])
    m = rank_metrics(y[350:], mean)
    assert m["kendall_tau"] > 0.9, m
    assert m["rmse"] < 0.02 and mean.shape == std.shape == (150,) and np.all(std >= 0)


def test_mlp_output_scale_is_calibrated_despite_a_strong_ranking_loss(cifar, synthetic):
    """The ranking loss ignores the output scale; the per-member line puts it back (same order)."""
    X, y = synthetic
    hp = {**FAST["mlp"], "rank_weight": 100.0}
    pred = make_predictor("mlp", cifar, **hp).fit(X[:350], y[:350])
    mean, _ = pred.predict(X[350:])
    slope = np.polyfit(mean, y[350:], 1)[0]  # measured vs predicted: 1 when the scale is right
    assert 0.7 < slope < 1.3 and rank_metrics(y[350:], mean)["rmse"] < 0.02, slope
    identity = pred.calibration.clone()
    identity[:, 0], identity[:, 1] = 0.0, 1.0
    raw = pred.calibration
    pred.calibration = identity
    raw_mean, _ = pred.predict(X[350:])
    pred.calibration = raw
    assert abs(np.polyfit(raw_mean, y[350:], 1)[0] - 1) > abs(slope - 1)  # uncalibrated: worse scale


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_and_foreign_space(kind, cifar, synthetic, tmp_path):
    X, y = synthetic
    pred = make_predictor(kind, cifar, **FAST[kind], features="encoding" if kind == "gp" else "cost")
    pred.fit(X[:120], y[:120]).save(tmp_path / "p.pt", {"note": "x"})
    loaded = load_predictor(tmp_path / "p.pt", cifar)
    for a, b in zip(pred.predict(X[400:]), loaded.predict(X[400:])):
        np.testing.assert_array_equal(a, b)
    assert loaded.kind == kind and loaded.meta["note"] == "x" and loaded.space_fingerprint == cifar.fingerprint
    assert load_predictor(tmp_path / "p.pt").space_fingerprint == cifar.fingerprint  # space from the file
    other = SearchSpace.from_config("imagenet")
    with pytest.raises(PredictorError) as e:
        load_predictor(tmp_path / "p.pt", other)
    msg = str(e.value)
    assert cifar.fingerprint in msg and other.fingerprint in msg and "\n" not in msg


def test_rank_gauss_target_maps_back_monotonically_and_round_trips(cifar, synthetic, tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[rng.normal(0.8, 0.02, 300), 0.3, 0.35, 0.8, 0.8]  # a low tail and ties
    z, state = fit_target(y, "rank_gauss")
    assert abs(z.mean()) < 0.05 and np.argsort(z, kind="stable").tolist() == np.argsort(y, kind="stable").tolist()
    back, _ = inverse_target(z, np.zeros_like(z), state)
    np.testing.assert_allclose(back, y, atol=1e-12)  # the fitted points map back exactly
    grid = np.linspace(-6, 6, 200)  # also beyond the fitted range: strictly increasing, no ties
    mean, std = inverse_target(grid, np.full_like(grid, 0.1), state)
    assert np.all(np.diff(mean) > 0) and np.all(std > 0)
    X, ys = synthetic
    pred = make_predictor("gbt", cifar, members=2, target="rank_gauss").fit(X[:200], ys[:200])
    mean, _ = pred.predict(X[200:])
    assert rank_metrics(ys[200:], mean)["kendall_tau"] > 0.8 and abs(np.median(mean) - np.median(ys)) < 0.01
    pred.save(tmp_path / "rg.pt")
    loaded = load_predictor(tmp_path / "rg.pt", cifar)
    assert loaded.target == "rank_gauss"
    np.testing.assert_array_equal(loaded.predict(X[200:])[0], mean)
    with pytest.raises(PredictorError, match="unknown target transform 'log': expected one of"):
        make_predictor("gp", cifar, target="log")


def test_bad_inputs_are_one_line_user_errors(cifar, synthetic, tmp_path):
    X, y = synthetic
    with pytest.raises(PredictorError, match="not fitted"):
        make_predictor("gp", cifar).predict(X)
    with pytest.raises(PredictorError, match=r"expected \(n, 86\)"):
        make_predictor("gbt", cifar, members=1).fit(X[:50], y[:50]).predict(X[:, :10])
    with pytest.raises(PredictorError, match="unknown predictor kind 'svm'"):
        make_predictor("svm", cifar)
    with pytest.raises(PredictorError, match="unknown mlp hyper-parameter 'depth'"):
        make_predictor("mlp", cifar, depth=3)
    with pytest.raises(PredictorError, match="fit got 10 encodings but 9 accuracies"):
        make_predictor("gp", cifar).fit(X[:10], y[:9])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PredictorError, match="not readable"):
        load_predictor(tmp_path / "junk.pt")


def test_select_predictor_prefers_better_ranking(cifar, synthetic):
    X, y = synthetic
    candidates = {"gp": lambda: make_predictor("gp", cifar),
                  "two-stumps": lambda: make_predictor("gbt", cifar, members=1, n_estimators=2, max_depth=1)}
    best, scores = select_predictor(X[:200], y[:200], candidates, k=3)
    assert best == "gp" and set(scores) == set(candidates)
    assert scores["gp"] > 0.85 > scores["two-stumps"]


def test_select_kind_scores_the_blend_from_its_members_and_stops_hopeless_ones(cifar, synthetic):
    """`--model auto`'s selection: the blend's fold tau from its members' predictions equals the
    tau of the blend fitted on its own; a candidate far behind stops after one fold."""
    from predictors.selection import auto_plan, select_kind

    X, y = synthetic
    X, y = X[:150], y[:150]
    members = {"gp": {}, "gbt": {"members": 1, "n_estimators": 50}}
    plan = {"blend": {"members": members}, "gp": {}, "gbt": {"members": 1, "n_estimators": 2, "max_depth": 1}}
    fits = []

    def make(kind, hp):
        fits.append(kind)
        return make_predictor(kind, cifar, **hp)

    best, scores, ran = select_kind(X, y, plan, make, k=3)
    old = select_predictor(X, y, {"blend": lambda: make_predictor("blend", cifar, members=members)}, k=3)[1]
    assert scores["blend"] == pytest.approx(old["blend"], abs=1e-9)
    assert ran["blend"] == 3 and ran["gbt"] == 1 and best == max(scores, key=scores.get)  # two stumps: hopeless
    assert fits.count("gp") == 3  # one gp fit per fold serves the blend and gp (fold 1), none twice
    assert auto_plan(999, ["gbt", "blend"]) == (5, {"gbt": {}, "blend": {"members": {"mlp": {}, "gbt": {}, "gp": {}}}})
    folds, large = auto_plan(1500, ["gbt", "blend"])
    assert folds == 3 and large["gbt"]["n_estimators"] == large["blend"]["members"]["gbt"]["n_estimators"] == 300


def test_rank_metrics_known_values():
    y = np.array([0.1, 0.2, 0.3, 0.4])
    assert rank_metrics(y, y) == {"kendall_tau": 1.0, "spearman": 1.0, "rmse": 0.0, "n": 4}
    rev = rank_metrics(y, y[::-1])
    assert rev["kendall_tau"] == pytest.approx(-1) and rev["rmse"] == pytest.approx(np.sqrt(0.05))
    assert rank_metrics(y, np.full(4, 0.5))["kendall_tau"] == 0.0  # no ranking, not NaN


def test_spread_sample_covers_flops_range_and_block_types(cifar):
    rng = np.random.default_rng(3)
    archs = sample_archs_spread(cifar, 200, rng)
    assert len({str(a) for a in archs}) == 200
    lo, hi = np.log(cifar.flops(cifar.smallest())), np.log(cifar.flops(cifar.largest()))
    pos = (np.log([cifar.flops(a) for a in archs]) - lo) / (hi - lo)
    uniform = (np.log([cifar.flops(cifar.sample(rng)) for _ in range(200)]) - lo) / (hi - lo)
    assert pos.min() < 0.1 and pos.max() > 0.85 and pos.std() > 1.5 * uniform.std()
    first = pos[:40]  # a prefix is spread as well
    assert first.min() < 0.2 and first.max() > 0.8
    blocks = {b for a in archs for s in a.stages for b in {l.block for l in s.layers}}
    assert blocks == set(cifar.config.stages[0].blocks)
    pure = sum(len({l.block for l in s.layers}) == 1 and s.depth == 3 for a in archs for s in a.stages[1:])
    assert pure > 40  # single-type deep stages, rare under uniform sampling (4 / 64)


# ----------------------------------------------------------------------------- accuracy datasets


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A tiny supernet briefly trained on digits (largest subnet, SGD) and saved as a checkpoint."""
    space = SearchSpace.from_config(DIGITS_SPACE)
    bundle = load_dataset("digits")
    torch.manual_seed(0)
    net = Supernet(space)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        for x, y in iterate_batches(bundle.train, bundle, 64, train=True, generator=gen):
            net.set_active(space.sample(rng) if rng.random() < 0.5 else space.largest())
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    save_supernet(path, net, meta={"dataset": "digits", "data": None, "val_fraction": 0.1, "split_seed": 0})
    return space, bundle, path


def test_dataset_builder_is_resumable(digits_setup, tmp_path):
    space, bundle, ckpt = digits_setup
    from search_space import load_supernet

    net, _ = load_supernet(ckpt)
    calls = {"n": 0, "stop_after": 4}

    def calib():
        calls["n"] += 1
        if calls["n"] > calls["stop_after"]:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the 5th subnet
        return iterate_batches(bundle.train, bundle, 64, train=True, generator=torch.Generator().manual_seed(0))

    def evaluate():
        return iterate_batches(bundle.val, bundle, 512, train=False)

    out = tmp_path / "acc.jsonl"
    kw = dict(checkpoint_hash=checkpoint_hash(ckpt), dataset="digits", num_calib_batches=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_accuracy_dataset(net, space, 10, calib, evaluate, out, **kw)
    partial = AccuracyDataset.load(out)
    assert len(partial) == 4
    calls.update(n=0, stop_after=10**6)
    full = build_accuracy_dataset(net, space, 10, calib, evaluate, out, **kw)
    assert calls["n"] == 6 and len(full) == 10  # only the 6 missing subnets were measured
    assert [r["arch"] for r in full.records[:4]] == [r["arch"] for r in partial.records]
    reread = AccuracyDataset.load(out)
    assert reread.records == full.records and reread.header["checkpoint_hash"] == checkpoint_hash(ckpt)
    assert all(0 <= r["accuracy"] <= 1 and r["flops"] == space.flops(space.parse(r["arch"])) for r in reread.records)
    X, y = reread.arrays()
    assert X.shape == (10, space.encoding_size) and y.shape == (10,)
    calls["n"] = 0
    assert len(build_accuracy_dataset(net, space, 10, calib, evaluate, out, **kw)) == 10 and calls["n"] == 0
    with pytest.raises(AccuracyDatasetError, match="this run has checkpoint_hash='0000': expected the same to resume"):
        build_accuracy_dataset(net, space, 10, calib, evaluate, out, **{**kw, "checkpoint_hash": "0000"})


def test_cli_dataset_fit_eval_end_to_end(digits_setup, tmp_path, capsys):
    space, _, ckpt = digits_setup
    train, held, pred, plot = (str(tmp_path / f) for f in ("train.jsonl", "held.jsonl", "p.pt", "p.png"))
    common = ["--checkpoint", str(ckpt), "--device", "cpu", "--calib-batches", "2", "--calib-batch-size", "128",
              "--quiet"]
    assert main(["predictor", "dataset", *common, "--n", "36", "--out", train]) == 0
    assert main(["predictor", "dataset", *common, "--n", "16", "--out", held, "--seed", "1"]) == 0
    data = AccuracyDataset.load(train)
    assert len(data) == 36 and data.header["dataset"] == "digits" and data.header["split"] == "val"
    assert data.header["space_fingerprint"] == space.fingerprint
    assert main(["predictor", "fit", "--data", train, "--model", "auto", "--folds", "2", "--candidates", "gbt,gp",
                 "--out", pred]) == 0
    out = capsys.readouterr().out
    assert "2-fold Kendall tau: gbt" in out and " gp " in out and "fitted" in out
    assert main(["predictor", "eval", "--predictor", pred, "--data", held, "--plot", plot, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[0])
    assert metrics["n"] == 16 and -1 <= metrics["kendall_tau"] <= 1 and metrics["rmse"] >= 0
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # bad input: exit code 2 and one line naming the value
    assert main(["predictor", "dataset", *common, "--n", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["predictor", "eval", "--predictor", pred, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["predictor", "fit", "--data", train, "--candidates", "gbt,svm", "--out", pred]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--n 0" in err[0] and "missing.jsonl" in err[1] and "'svm'" in err[2]


def test_compare_predictors_writes_report(cifar, synthetic, tmp_path):
    from predictors.benchmark import compare_predictors, holdout_split, write_report

    X, y = synthetic
    fit_idx, test_idx = holdout_split(200, 150, seed=0)
    assert len(np.intersect1d(fit_idx, test_idx)) == 0 and len(fit_idx) + len(test_idx) == 200
    result, fitted = compare_predictors(cifar, X[:200], y[:200], fit_idx, test_idx, kinds=("gp",),
                                        features=("cost",), folds=2, log=lambda *_: None)
    assert fitted[("gp", "cost")].fitted
    assert result["selection"]["selected"] == "gp" and result["selected_test"]["kendall_tau"] > 0.8
    assert result["baselines_kendall_tau"]["flops"] > 0.5  # the synthetic target grows with FLOPs
    paths = write_report(tmp_path, "bench", "synthetic", result, {"command": "pytest"})
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text())["rows"][0]["kind"] == "gp"
    assert "| gp | cost |" in paths[1].read_text()


def test_accuracy_by_block_script_groups_by_each_stages_first_block(tmp_path):
    """experiments/accuracy_by_block.py: per-stage means of hand-made records, checked by hand."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    space = SearchSpace.from_config("cifar_pool")
    data = AccuracyDataset.new(space, "0" * 16, "cifar10-jpeg", "val")
    for text, acc in [("r32/w1:cp3e1/w1:rn3e1/w1:rn3e1", 0.90), ("r32/w1:cp3e1,rn3e1/w1:mb3e3/w1:rn3e1", 0.80),
                      ("r32/w0.5:rn3e1/w1:rn3e1/w1:rn3e1", 0.70)]:
        data.records.append({"arch": text, "accuracy": acc, "flops": int(space.flops(space.parse(text)))})
    path = data.save(tmp_path / "acc.jsonl")
    out = tmp_path / "table.md"
    run = subprocess.run([sys.executable, str(root / "experiments" / "accuracy_by_block.py"), str(path),
                          "--out", str(out)], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line.split("|")[4].strip()
            for line in out.read_text().splitlines() if line.startswith("| ") and "%" in line}
    assert rows[("1", "conv_pool (cp)", "2")] == "85.00%"
    assert rows[("1", "resnet (rn)", "1")] == "70.00%"
    assert rows[("2", "resnet (rn)", "2")] == "80.00%" and rows[("2", "mbconv (mb)", "1")] == "80.00%"
    assert rows[("3", "resnet (rn)", "3")] == "80.00%"
    bad = subprocess.run([sys.executable, str(root / "experiments" / "accuracy_by_block.py"), str(tmp_path / "no.jsonl")],
                         capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert bad.returncode != 0 and "not found" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


class GridSpace:
    """A user-defined space following only search.SearchSpaceProtocol: four genes of three choices."""

    name, fingerprint = "grid", "grid-4x3"

    def suggest(self, trial):
        return tuple(trial.suggest_categorical(f"g{i}", [0, 1, 2]) for i in range(4))

    def from_params(self, params):
        return tuple(params[f"g{i}"] for i in range(4))

    def encode_many(self, archs):
        return np.asarray(archs, float).reshape(len(archs), 4)


@pytest.mark.parametrize("kind", ["gbt", "mlp"])
def test_predictors_work_on_any_protocol_space(kind, tmp_path):
    space = GridSpace()
    rng = np.random.default_rng(0)
    X = space.encode_many([tuple(rng.integers(0, 3, 4)) for _ in range(60)])
    y = 0.5 + 0.05 * X @ np.array([1.0, 2.0, 3.0, 4.0])
    pred = make_predictor(kind, space, **FAST[kind]).fit(X, y)
    assert pred.features == "encoding"  # the default recipe on a space without a config
    mean, _ = pred.predict(X)
    assert rank_metrics(y, mean)["kendall_tau"] > 0.7
    path = pred.save(tmp_path / "p.pt")
    np.testing.assert_allclose(load_predictor(path, space).predict(X)[0], mean, rtol=1e-6)
    with pytest.raises(PredictorError, match="user-defined space 'grid'"):
        load_predictor(path)
    with pytest.raises(PredictorError, match="encodings have shape"):
        pred.predict(X[:, :3])
    with pytest.raises(PredictorError, match="needs a search_space.SearchSpace"):
        make_predictor(kind, space, features="composition")
