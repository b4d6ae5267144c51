"""Supernet training: loss goes down, checkpoints resume exactly, DDP keeps ranks in sync, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from hwnas.cli import main
from hwnas.data_wiring import epoch_batches, load_for_space
from search_space import SearchSpace, Supernet, load_supernet
from search_space.checkpoint import read_checkpoint
from search_space.evaluation import fit_resolution
from search_space.train_state import read_metrics
from search_space.training import (TrainConfig, TrainingError, WarmupCosine, build_optimizer, sandwich_archs,
                                   sandwich_step, soft_cross_entropy, time_sandwich_steps, train_supernet)

# Like TINY in test_search_space.py, for 1-channel 8x8 digits with 10 classes; dropout draws from
# torch's global RNG, so the exact-resume test also checks that its state is restored.
DIGITS_SPACE = {
    "name": "tiny-digits", "in_channels": 1, "num_classes": 10, "resolutions": [8, 6], "dropout": 0.2,
    "stem": {"channels": 8, "kernel": 3, "stride": 1},
    "defaults": {"widths": [0.5, 1.0], "blocks": ["mbconv", "resnet"], "kernels": [3],
                 "expansions": {"mbconv": [2], "resnet": [1]}},
    "stages": [{"channels": 16, "stride": 2, "depths": [1, 2]}, {"channels": 16, "stride": 1, "depths": [1]}],
}
BATCH = 128


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is small and shared: one intra-op thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_config(DIGITS_SPACE)


@pytest.fixture(scope="module")
def digits(space):
    return load_for_space("digits", None, space)


def _run(space, digits, config, checkpoint, **kw):
    """Fresh supernet (seeded), trained by train_supernet on digits; returns (supernet, history)."""
    torch.manual_seed(config.seed)
    net = Supernet(space)
    batches = kw.pop("batches", epoch_batches(digits, config.batch_size, config.seed, torch.device("cpu")))
    history = train_supernet(net, batches, len(digits.train) // config.batch_size, config, checkpoint,
                             progress=False, **kw)
    return net, history


def _interrupt_at(batches, epoch_to_fail):
    """Batches that raise KeyboardInterrupt at the start of one epoch (a killed run)."""
    def wrapped(epoch):
        if epoch == epoch_to_fail:
            raise KeyboardInterrupt
        return batches(epoch)

    return wrapped


@pytest.mark.parametrize("teacher_cutout,ema_decay", [(False, None), (True, None), (False, 0.9)])
def test_training_lowers_loss_and_resumes_exactly(space, digits, tmp_path, teacher_cutout, ema_decay):
    config = TrainConfig(epochs=3, batch_size=BATCH, lr=0.2, seed=3, teacher_cutout=teacher_cutout,
                         ema_decay=ema_decay)
    # Uninterrupted run, evaluating every epoch: evaluation must not change the training.
    evaluate = lambda net: {"val_acc_largest": 0.0}
    full, history = _run(space, digits, config, tmp_path / "a" / "supernet.pt",
                         metrics_path=tmp_path / "a" / "metrics.jsonl", evaluate=evaluate)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    assert history[-1]["distill_loss"] < history[0]["distill_loss"]
    assert read_metrics(tmp_path / "a" / "metrics.jsonl") == history

    # Killed after epoch 2 (its checkpoint is written), then resumed by a fresh process-like run.
    ckpt = tmp_path / "b" / "supernet.pt"
    batches = epoch_batches(digits, BATCH, config.seed, torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        _run(space, digits, config, ckpt, batches=_interrupt_at(batches, 2))
    loaded, blob = load_supernet(ckpt, space)
    assert blob["train_state"]["epoch"] == 2 and blob["meta"]["epoch"] == 2
    torch.manual_seed(12345)  # a different global RNG state: resume must restore the saved one
    np.random.seed(7)
    resumed, resumed_history = _run(space, digits, config, ckpt, resume=True)
    assert [r["epoch"] for r in resumed_history] == [1, 2, 3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed_history[-1]["loss"] == history[-1]["loss"]

    # A finished run resumes to a no-op; other settings or no --resume are refused in one line.
    _run(space, digits, config, ckpt, resume=True)
    with pytest.raises(TrainingError, match=r"lr=0\.1 \(checkpoint: 0\.2\)"):
        _run(space, digits, dataclasses.replace(config, lr=0.1), ckpt, resume=True)
    with pytest.raises(TrainingError, match="already exists"):
        _run(space, digits, config, ckpt)

    # A checkpoint written before the `students` setting existed trained with the pure smallest:
    # it resumes as `sandwich` and refuses the new default.
    blob = torch.load(ckpt, weights_only=False)
    blob["train_state"]["config"].pop("students")
    torch.save(blob, ckpt)
    with pytest.raises(TrainingError, match=r"students='mixed' \(checkpoint: 'sandwich'\)"):
        _run(space, digits, config, ckpt, resume=True)
    _run(space, digits, dataclasses.replace(config, students="sandwich"), ckpt, resume=True)


def test_weight_ema_is_what_checkpoints_and_evaluations_hold(space, digits, tmp_path):
    """With ema_decay the saved model, the evaluated model and the returned model are the
    average; the raw weights ride along in train_state for resuming, and they differ."""
    config = TrainConfig(epochs=2, batch_size=BATCH, lr=0.2, seed=1, ema_decay=0.9)
    seen = []
    evaluate = lambda net: seen.append({k: v.clone() for k, v in net.state_dict().items()}) or {}
    net, _ = _run(space, digits, config, tmp_path / "supernet.pt", evaluate=evaluate)
    blob = read_checkpoint(tmp_path / "supernet.pt")
    params = dict(net.named_parameters())
    for name, p in params.items():
        assert torch.equal(blob["model"][name], p.detach()), name
        assert torch.equal(seen[-1][name], p.detach()), name
    raw = blob["train_state"]["ema_raw"]
    assert len(raw) == len(params) and any(not torch.equal(r, p.detach()) for r, p in zip(raw, params.values()))


def test_weight_ema_update_and_swap():
    from search_space.ema import WeightEMA

    layer = torch.nn.Linear(2, 1)
    ema = WeightEMA(layer, decay=0.5)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(step=100)  # ramp done: decay 0.5
    assert torch.allclose(ema.shadow[0], start + 0.5)
    with ema.swapped():
        assert torch.allclose(layer.weight, start + 0.5)
    assert torch.allclose(layer.weight, start + 1.0)
    ema.update(step=0)  # ramp: decay min(0.5, 1/10), the average follows the weights closely
    assert torch.allclose(ema.shadow[0], start + 0.5 + 0.9 * 0.5)
    with pytest.raises(ValueError, match="decay=1.0 is invalid"):
        WeightEMA(layer, decay=1.0)


def test_schedule_optimizer_and_sandwich(space):
    sched = WarmupCosine(total_steps=100, warmup_steps=10)
    factors = [sched(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01
    net = Supernet(space)
    decayed, plain = build_optimizer(net, TrainConfig(epochs=1, batch_size=8)).param_groups
    assert all(p.ndim > 1 for p in decayed["params"]) and decayed["weight_decay"] > 0
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0
    archs = sandwich_archs(space, np.random.default_rng(0), 3, "sandwich")
    assert archs[:2] == [space.largest(), space.smallest()] and len(archs) == 5
    assert len(sandwich_archs(space, np.random.default_rng(0), 3, "uniform")) == 5
    assert sandwich_archs(space, np.random.default_rng(0), 0, "none") == [space.largest()]  # plain-network baseline
    # mixed: the smallest sizes everywhere, block types drawn per layer (so they differ across steps)
    rng, small = np.random.default_rng(0), space.smallest()
    mixed = [sandwich_archs(space, rng, 0, "mixed")[1] for _ in range(20)]
    for arch in mixed:
        space.validate(arch)
        assert arch.resolution == small.resolution
        for s, t in zip(arch.stages, small.stages):
            assert (s.width, s.depth) == (t.width, t.depth)
            assert all(l.kernel == min(space.config.stages[0].kernels) for l in s.layers)
    assert len({l.block for a in mixed for s in a.stages for l in s.layers}) == len(space.config.stages[0].blocks)
    # families: the smallest, then the largest of one block type per step; every type comes round
    rng, ext = np.random.default_rng(0), space.extremes()
    fams = {n: a for n, a in ext.items() if n.startswith("largest_")}
    steps = [sandwich_archs(space, rng, 1, "families") for _ in range(40)]
    assert all(st[:2] == [space.largest(), space.smallest()] and len(st) == 4 for st in steps)
    assert all(st[2] in fams.values() for st in steps) and {str(st[2]) for st in steps} == {str(a) for a in fams.values()}
    assert TrainConfig(epochs=1, batch_size=256).peak_lr == pytest.approx(0.1)
    assert TrainConfig(epochs=1, batch_size=512).peak_lr == pytest.approx(0.2)
    assert TrainConfig(epochs=1, batch_size=2048).peak_lr == pytest.approx(0.2)  # capped: 0.8 diverged
    assert TrainConfig(epochs=1, batch_size=2048, lr=0.8).peak_lr == 0.8  # an explicit lr is kept


def test_divergence_stops_training_and_keeps_the_last_checkpoint(space, digits, tmp_path):
    ckpt = tmp_path / "supernet.pt"
    config = TrainConfig(epochs=3, batch_size=BATCH, lr=0.05, grad_clip=None, warmup_fraction=0.0)
    _run(space, digits, config, ckpt)
    assert read_checkpoint(ckpt)["train_state"]["epoch"] == 3
    wild = TrainConfig(epochs=3, batch_size=BATCH, lr=1e4, grad_clip=None, warmup_fraction=0.0)
    ckpt2 = tmp_path / "wild.pt"
    with pytest.raises(TrainingError, match=r"training diverged in epoch 1: .* at peak lr 10000; expected a lower --lr"):
        _run(space, digits, wild, ckpt2)
    assert not ckpt2.exists()  # nothing written for the diverged epoch


def test_teacher_dropout_applies_to_the_largest_only(space, digits):
    net = Supernet(space)
    seen = []
    net.head.dropout.register_forward_pre_hook(lambda module, args: seen.append(module.p))
    archs = sandwich_archs(space, np.random.default_rng(0), 2, "sandwich")
    x, y = next(iter(epoch_batches(digits, 32, 0, torch.device("cpu"))(0)))
    for teacher_dropout, expected in ((0.5, [0.5, 0.2, 0.2, 0.2]), (None, [0.2] * 4)):
        seen.clear()
        config = TrainConfig(epochs=1, batch_size=32, teacher_dropout=teacher_dropout)
        sandwich_step(net, net, archs, x, y, build_optimizer(net, config), config)
        assert seen == pytest.approx(expected)  # DIGITS_SPACE's own dropout is 0.2
        assert net.head.dropout.p == 0.2  # restored for evaluation and extraction


def test_teacher_cutout_holes_the_teachers_labelled_view_only(space, digits):
    net = Supernet(space)
    seen = []  # (input, grad enabled) of every forward
    net.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), torch.is_grad_enabled())))
    archs = sandwich_archs(space, np.random.default_rng(0), 2, "sandwich")
    x, y = next(iter(epoch_batches(digits, 32, 0, torch.device("cpu"))(0)))
    config = TrainConfig(epochs=1, batch_size=32, teacher_cutout=True)
    sandwich_step(net, net, archs, x, y, build_optimizer(net, config), config)
    assert len(seen) == len(archs) + 1  # one extra forward: the teacher on the clean view
    (holed, grad0), (clean, grad1), *students = seen
    zeroed = (holed == 0).all(dim=1) & (x != 0).any(dim=1)  # pixels Cutout set to the mean colour
    assert grad0 and zeroed.flatten(1).any(dim=1).all()  # every image got a hole, with gradients
    assert torch.equal(holed[~zeroed.unsqueeze(1).expand_as(x)], x[~zeroed.unsqueeze(1).expand_as(x)])
    assert not grad1 and torch.equal(clean, x)  # soft targets from the clean view, without gradients
    assert all(grad and torch.equal(xs, fit_resolution(x, a.resolution)) for (xs, grad), a in zip(students, archs[1:]))


def test_logit_scale_scales_the_teacher_loss_and_the_students_targets(space, digits):
    """With logit_scale s the teacher's loss is the cross-entropy of s * logits, and the students
    distil softmax(s * teacher logits) with their own logits scaled by s as well."""
    archs = sandwich_archs(space, np.random.default_rng(0), 1, "sandwich")
    x, y = next(iter(epoch_batches(digits, 32, 0, torch.device("cpu"))(0)))
    torch.manual_seed(0)
    net = Supernet(space).eval()  # eval: dropout off, BN running stats, so forwards repeat exactly
    with torch.no_grad():
        logits = []
        for a in archs:
            net.set_active(a)
            logits.append(net(x))
    config = TrainConfig(epochs=1, batch_size=32, logit_scale=0.125, grad_clip=None)
    out = sandwich_step(net, net, archs, x, y, torch.optim.SGD(net.parameters(), lr=0.0), config)
    teacher = F.cross_entropy(logits[0] * 0.125, y, label_smoothing=config.label_smoothing)
    assert out["loss"] == pytest.approx(teacher.item(), rel=1e-5)
    targets = F.softmax(logits[0] * 0.125, dim=1)
    students = [soft_cross_entropy(l * 0.125, targets).item() for l in logits[1:]]
    assert out["distill_loss"] == pytest.approx(np.mean(students), rel=1e-5)
    unscaled = sandwich_step(net, net, archs, x, y, torch.optim.SGD(net.parameters(), lr=0.0),
                             dataclasses.replace(config, logit_scale=1.0))
    assert unscaled["loss"] == pytest.approx(F.cross_entropy(logits[0], y, label_smoothing=0.1).item(), rel=1e-5)


@pytest.mark.parametrize("field,value,needle", [
    ("epochs", 0, "epochs=0 is invalid; expected an int >= 1"),
    ("teacher_dropout", 1.0, "teacher_dropout=1.0 is invalid; expected a number in [0, 1) or None"),
    ("teacher_cutout", "yes", "teacher_cutout='yes' is invalid; expected true or false"),
    ("ema_decay", 1.0, "ema_decay=1.0 is invalid; expected a number in (0, 1) or None"),
    ("batch_size", 1.5, "batch_size=1.5"),
    ("lr", -1.0, "lr=-1.0"),
    ("label_smoothing", 1.0, "label_smoothing=1.0"),
    ("logit_scale", 0.0, "logit_scale=0.0 is invalid; expected a positive number"),
])
def test_bad_train_config_is_one_line(field, value, needle):
    kw = {"epochs": 1, "batch_size": 8, field: value}
    with pytest.raises(TrainingError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cli_train_eval_and_bad_inputs(tmp_path, capsys):
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump(DIGITS_SPACE))
    out = tmp_path / "run"
    args = ["supernet", "train", "--space", str(cfg), "--dataset", "digits", "--epochs", "2", "--out", str(out),
            "--batch-size", str(BATCH), "--lr", "0.3", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val_acc_smallest" in records[-1]
    more = [("3" if a == "2" else a) for a in args]
    assert main(more + ["--resume"]) == 2  # other epochs: refused, one line
    err = capsys.readouterr().err.strip()
    assert "epochs=3 (checkpoint: 2)" in err and "\n" not in err
    assert main(args + ["--resume", "--augment", "crop_flip_cutout"]) == 2  # other augmentation: refused too
    err = capsys.readouterr().err.strip()
    assert "augment='crop_flip_cutout' (checkpoint: None)" in err and "\n" not in err
    cut = tmp_path / "cutout"  # recipe options reach the stored config
    assert main([(str(cut) if a == str(out) else a) for a in args] + [
        "--augment", "crop_flip_cutout", "--label-smoothing", "0.2", "--logit-scale", "0.125",
        "--warmup-fraction", "0.2", "--grad-clip", "0"]) == 0
    stored = read_checkpoint(cut / "supernet.pt")["train_state"]["config"]
    assert stored["augment"] == "crop_flip_cutout" and stored["grad_clip"] is None
    assert (stored["label_smoothing"], stored["logit_scale"], stored["warmup_fraction"]) == (0.2, 0.125, 0.2)

    assert main(["supernet", "eval", "--checkpoint", str(out / "supernet.pt"), "--device", "cpu", "largest"]) == 0
    text = capsys.readouterr().out
    val, test = (float(text.split(f"{s} accuracy ")[1].split()[0]) for s in ("val", "test"))
    assert 0.3 < val <= 1 and 0.3 < test <= 1  # 2 tiny epochs: far above the 0.1 of chance

    bad = [
        (["supernet", "train", "--dataset", "fashion-mnist", "--data", str(tmp_path / "nope.npz"), "--out",
          str(tmp_path / "x")], "nope.npz"),
        (["supernet", "train", "--dataset", "mnist2", "--out", str(tmp_path / "y")], "unknown dataset 'mnist2'"),
        (["supernet", "eval", "--checkpoint", str(tmp_path / "missing.pt"), "largest"], "missing.pt"),
        (["supernet", "eval", "--checkpoint", str(out / "supernet.pt"), "r8/w9:mb3e2"], "r8/w9:mb3e2"),
        (["supernet", "train", "--space", str(cfg), "--dataset", "digits", "--out", str(tmp_path / "z"),
          "--device", "tpu"], "device 'tpu'"),
    ]
    for argv, needle in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err


def test_time_sandwich_steps_times_warmed_up_steps(space):
    batches = ((torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(100))
    step_s, net, opt = time_sandwich_steps(space, TrainConfig(epochs=1, batch_size=8, num_random=1), batches,
                                           torch.device("cpu"), subnet_lists=2, repeats=2)
    assert 0 < step_s < 10 and isinstance(net, Supernet) and opt.state  # the probe trained its own supernet


def test_cli_time_budget_plans_the_epochs_and_a_resume_keeps_them(tmp_path, capsys):
    cfg = tmp_path / "space.yaml"
    cfg.write_text(yaml.safe_dump(DIGITS_SPACE))
    out = tmp_path / "run"
    args = ["supernet", "train", "--space", str(cfg), "--dataset", "digits", "--out", str(out),
            "--batch-size", str(BATCH), "--device", "cpu", "--quiet", "--time-budget-min", "0.05"]
    assert main(args) == 0
    blob = read_checkpoint(out / "supernet.pt")
    plan, epochs = blob["meta"]["plan"], blob["train_state"]["config"]["epochs"]
    assert plan["epochs"] == epochs >= 1 and plan["budget_s"] == 3.0 and plan["step_s"] > 0
    first = read_metrics(out / "metrics.jsonl")
    # all planned epochs, or (a loaded machine ran slower than the probe) stopped by the time guard
    assert len(first) == epochs or len(first) < epochs and first[-1].get("stopped") == "time_limit"
    # Resuming with the budget again: its own plan, nothing re-planned; a finished run adds nothing,
    # a guarded one continues towards its planned epochs.
    assert main(args + ["--resume"]) == 0
    assert read_checkpoint(out / "supernet.pt")["meta"]["plan"] == plan
    after = read_metrics(out / "metrics.jsonl")
    assert len(after) == epochs if len(first) == epochs else len(first) < len(after) <= epochs
    capsys.readouterr()
    assert main(args[:-1] + ["0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--time-budget-min 0" in err and "\n" not in err
