"""One-stage weight-sharing supernet training (sandwich rule + in-place distillation).

Each step trains the largest subnet on the labels (label smoothing) and a small student plus
``num_random`` random subnets on the largest's detached soft outputs (BigNAS, AttentiveNAS);
gradients of all of them accumulate, then one optimizer step. The small student is by default
the smallest sizes with a random block type per layer ("mixed"): with the pure smallest
(BigNAS), subnets that mix block types were trained too rarely and scored far below both
extremes (experiments/results/supernet_bench/student_rules_digits.md). This module takes batches as
callables, so it does not depend on where data comes from (``hwnas`` wires datasets to it).

Optimizer: SGD with Nesterov momentum. For convolutional networks on CIFAR/ImageNet it matches or
beats AdamW at equal epochs (OFA, BigNAS and the CIFAR ResNet-18 reference all use it), it keeps
one state buffer per weight instead of two (the checkpoint of a 33M-parameter supernet stays half
the size), and its update of a shared weight is linear in the summed subnet gradients, which keeps
the weight-sharing dynamics easy to reason about.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch, LayerChoice, StageChoice
from .augment import random_cutout
from .checkpoint import CheckpointError, read_checkpoint, save_supernet
from .ema import WeightEMA
from .errors import UserError
from .evaluation import Batches, evaluate_archs, fit_resolution
from .space import SearchSpace
from .supernet import Supernet
from .train_dist import DistContext, maybe_no_sync, wrap_model
from .train_state import capture_rng, restore_rng, write_metrics

Batch = tuple[torch.Tensor, torch.Tensor]
EpochBatches = Callable[[int], Iterable[Batch]]
Evaluator = Callable[[Supernet], Mapping[str, float]]


class TrainingError(UserError):
    """A bad training setting, or a checkpoint that cannot be resumed with these settings."""


# Linear lr scaling stops here: a sandwich step adds the gradients of 2 + num_random subnets on the
# shared weights, so its effective step is several times a plain network's. On JPEG-CIFAR-10
# (H200, 2026-11-30, experiments/results/supernet_cifar/cifar_batch_ab.md) lr 0.2 trained at batch 512, 1024 and
# 2048, while the linearly scaled 0.4 (batch 1024) and 0.8 (2048) diverged.
MAX_DEFAULT_LR = 0.2
# An epoch whose mean teacher loss exceeds this many times a uniform guess's (ln classes) has
# diverged: training stops there (the last checkpoint stays) instead of burning the budget.
DIVERGED_LOSS_FACTOR = 3.0


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (stored in the checkpoint; resume requires equality).

    ``lr`` is the peak learning rate for the global ``batch_size``; ``None`` means 0.1 per 256
    images (linear scaling) up to :data:`MAX_DEFAULT_LR`. Warm-up is linear over
    ``warmup_fraction`` of all steps, then cosine decay to ``min_lr_ratio * lr``.
    """

    epochs: int
    batch_size: int
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    logit_scale: float = 1.0  # logits times this before every loss (Page's ResNet-9 used 1/8)
    num_random: int = 2
    students: str = "mixed"
    augment: str | None = None  # training-batch augmentation; None: the dataset's own (applied by the caller)
    teacher_dropout: float | None = None  # head dropout of the largest only (BigNAS); None: the space's for all
    teacher_cutout: bool = False  # Cutout on the largest's labelled view only; students distil its clean view
    ema_decay: float | None = None  # weights averaged with this decay (search_space.ema); None: off
    grad_clip: float | None = 5.0
    seed: int = 0

    def __post_init__(self):
        _check(self.epochs, "epochs", int, lambda v: v >= 1, "an int >= 1")
        _check(self.batch_size, "batch_size", int, lambda v: v >= 1, "an int >= 1")
        _check(self.num_random, "num_random", int, lambda v: v >= 0, "an int >= 0")
        _check(self.seed, "seed", int, lambda v: True, "an int")
        _check(self.students, "students", str, lambda v: v in STUDENT_RULES, f"one of {', '.join(STUDENT_RULES)}")
        if self.augment is not None:
            _check(self.augment, "augment", str, lambda v: bool(v), "an augmentation name or None")
        if self.teacher_dropout is not None:
            _check(self.teacher_dropout, "teacher_dropout", (int, float), lambda v: 0 <= v < 1,
                   "a number in [0, 1) or None")
        if self.ema_decay is not None:
            _check(self.ema_decay, "ema_decay", (int, float), lambda v: 0 < v < 1, "a number in (0, 1) or None")
        if not isinstance(self.teacher_cutout, bool):
            raise TrainingError(f"teacher_cutout={self.teacher_cutout!r} is invalid; expected true or false")
        if self.lr is not None:
            _check(self.lr, "lr", (int, float), lambda v: v > 0 and math.isfinite(v), "a positive number")
        _check(self.momentum, "momentum", (int, float), lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check(self.weight_decay, "weight_decay", (int, float), lambda v: v >= 0, "a number >= 0")
        _check(self.warmup_fraction, "warmup_fraction", (int, float), lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check(self.min_lr_ratio, "min_lr_ratio", (int, float), lambda v: 0 <= v <= 1, "a number in [0, 1]")
        _check(self.label_smoothing, "label_smoothing", (int, float), lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check(self.logit_scale, "logit_scale", (int, float), lambda v: v > 0 and math.isfinite(v), "a positive number")
        if self.grad_clip is not None:
            _check(self.grad_clip, "grad_clip", (int, float), lambda v: v > 0, "a positive number or None")

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up."""
        return self.lr if self.lr is not None else min(0.1 * self.batch_size / 256, MAX_DEFAULT_LR)

    def to_json(self) -> dict:
        """Plain data (stored in checkpoints)."""
        return dataclasses.asdict(self)


def _check(value, name: str, types, ok: Callable, expected: str) -> None:
    """Raise a one-line TrainingError unless ``value`` has ``types`` and passes ``ok``."""
    if isinstance(value, bool) or not isinstance(value, types) or not ok(value):
        raise TrainingError(f"{name}={value!r} is invalid; expected {expected}")


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up from 1/warmup to 1, then cosine to ``final``."""

    def __init__(self, total_steps: int, warmup_steps: int, final: float = 0.0):
        self.total, self.warmup, self.final = total_steps, warmup_steps, final

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD + Nesterov; weight decay on conv/linear weights only, not on BN parameters or biases
    (decaying those only shrinks scales that the next BN undoes, and hurts small subnets)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum, nesterov=config.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Per-step warm-up + cosine schedule over the whole run."""
    total = config.epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_fraction * total)) if config.warmup_fraction > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup, config.min_lr_ratio))


def smallest_mixed(space: SearchSpace, rng: np.random.Generator) -> Arch:
    """The smallest subnet's sizes (resolution, depth, width, kernel, expansion) with a random
    block type per layer: a lower bound for every type and for mixes of types."""
    stages = []
    for st, s in zip(space.config.stages, space.smallest().stages):
        layers = []
        for _ in s.layers:
            block = st.blocks[rng.integers(len(st.blocks))]
            layers.append(LayerChoice(block, min(st.kernels), min(st.expansions[block])))
        stages.append(StageChoice(s.width, tuple(layers)))
    return Arch(min(space.config.resolutions), tuple(stages))


# The students of one step, besides ``num_random`` random subnets (the teacher is always the largest).
STUDENT_RULES = {
    "sandwich": lambda space, rng: [space.smallest()],       # BigNAS: the smallest subnet every step
    "mixed": lambda space, rng: [smallest_mixed(space, rng)],  # smallest sizes, random block types
    "uniform": lambda space, rng: [space.sample(rng)],        # one more random subnet instead
    # the smallest plus the largest of one block type, a different type each step (per-block-type sandwich):
    # the plain sandwich only ever trains its largest's block types at full size, and on cifar_pool the
    # supernet scored the best stand-alone arch (wide conv_pool layers) 0.71 (final_cifar_pool.md)
    "families": lambda space, rng: [space.smallest(), _family_largest(space, rng)],
    "none": lambda space, rng: [],  # only the random ones; with num_random=0 the largest trains alone (a baseline)
}


def _family_largest(space: SearchSpace, rng: np.random.Generator) -> Arch:
    """The largest subnet of one block type the space offers, drawn at random."""
    families = [a for name, a in space.extremes().items() if name.startswith("largest_")] or [space.largest()]
    return families[rng.integers(len(families))]


# Settings of checkpoints written before the setting existed (resume must keep training as it did).
LEGACY_SETTINGS = {"students": "sandwich", "augment": None, "teacher_dropout": None, "teacher_cutout": False,
                   "ema_decay": None}


def saved_config(train_state: Mapping) -> dict:
    """The training settings stored in a checkpoint's ``train_state``; settings added after it was
    written take what training did before they existed (:data:`LEGACY_SETTINGS`)."""
    return {**LEGACY_SETTINGS, **train_state["config"]}


def sandwich_archs(space: SearchSpace, rng: np.random.Generator, num_random: int,
                   students: str = "mixed") -> list[Arch]:
    """The subnets of one step: largest (teacher) first, then the ``students`` rule's subnet,
    then ``num_random`` random ones."""
    return [space.largest(), *STUDENT_RULES[students](space, rng), *(space.sample(rng) for _ in range(num_random))]


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (in-place distillation), averaged over the batch."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def sandwich_step(model: nn.Module, supernet: Supernet, archs: Sequence[Arch], x: torch.Tensor, y: torch.Tensor,
                  optimizer: torch.optim.Optimizer, config: TrainConfig,
                  autocast_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over ``archs`` (``archs[0]`` is the teacher, trained on ``y``; the rest
    learn its soft outputs). ``model`` is ``supernet`` or its DDP wrapper. Returns detached
    device tensors (no host sync): teacher loss, mean student loss, teacher correct count."""
    optimizer.zero_grad(set_to_none=True)
    teacher_probs = None
    out = {}
    student_losses = []
    dropout = supernet.head.dropout
    space_p = dropout.p
    try:
        for i, arch in enumerate(archs):
            supernet.set_active(arch)
            # Regularise only the teacher (BigNAS): the largest over-fits while the small subnets under-fit.
            dropout.p = config.teacher_dropout if i == 0 and config.teacher_dropout is not None else space_p
            xi = fit_resolution(x, arch.resolution)
            if i == 0 and config.teacher_cutout:
                xi, clean = random_cutout(xi), xi
            # all-reduce once per step, after the last subnet's backward (see train_dist)
            with maybe_no_sync(model, skip_sync=i < len(archs) - 1):
                with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model(xi)
                # A scale < 1 softens the targets the loss pushes towards: on JPEG-CIFAR-10, ResNet-9 lost
                # 0.8 points without Page's 1/8 (experiments/results/supernet_cifar/data_ceiling_cifar/ablation).
                logits = logits.float() * config.logit_scale
                if teacher_probs is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                    teacher_probs = (_clean_view_probs(model, clean, autocast_dtype, config.logit_scale)
                                     if config.teacher_cutout else F.softmax(logits.detach(), dim=1))
                    out["loss"] = loss.detach()
                    out["correct"] = (logits.detach().argmax(1) == y).sum()  # on the holed view with teacher_cutout
                else:
                    loss = soft_cross_entropy(logits, teacher_probs)
                    student_losses.append(loss.detach())
                loss.backward()
    finally:  # the space's own dropout for everything else (evaluation, extraction)
        dropout.p = space_p
    out["distill_loss"] = torch.stack(student_losses).mean() if student_losses else torch.zeros_like(out["loss"])
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in supernet.parameters() if p.grad is not None], config.grad_clip)
    optimizer.step()
    return out


def _clean_view_probs(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None,
                      logit_scale: float = 1.0) -> torch.Tensor:
    """The active subnet's soft outputs on ``x`` without gradients: with ``teacher_cutout`` the
    students distil the image they see, not the teacher's holed one (a consistent teacher;
    Cutout on every subnet cost the small ones 4 points, experiments/results/supernet_cifar/cifar_cutout_ab.md)."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return F.softmax(model(x).float() * logit_scale, dim=1)


def time_sandwich_steps(space: SearchSpace, config: TrainConfig, batches: Iterable[Batch], device: torch.device,
                        subnet_lists: int = 10, repeats: int = 3,
                        dist: DistContext | None = None) -> tuple[float, Supernet, torch.optim.Optimizer]:
    """Seconds per training step of ``config`` on a throw-away supernet, after warm-up.

    The same ``subnet_lists`` sandwiches are run once untimed, then ``repeats`` times timed: the
    first pass pays cuDNN's autotuning of every new conv shape, which a real run pays once in
    thousands of steps (timing fresh random subnets measured 0.59 s/step on an H200 against
    0.07 s/step in training). ``batches`` must yield at least ``subnet_lists * (repeats + 1)``
    batches. Returns (seconds per step, the supernet, its optimizer) for further probes.

    Under DDP (``dist``) every rank times DDP steps on its slice of the global batches, as
    training runs them, and all get the slowest rank's time."""
    dist = dist or DistContext(device=device)
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed + 1)
    net = Supernet(space).to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    model = wrap_model(net, dist)
    opt = build_optimizer(net, config)
    rng = np.random.default_rng(config.seed + 1)
    lists = [sandwich_archs(space, rng, config.num_random, config.students) for _ in range(subnet_lists)]
    it = iter(batches)

    def run(n: int) -> None:
        for i in range(n):
            x, y = dist.shard(*next(it))
            x = x.contiguous(memory_format=torch.channels_last) if cuda else x
            sandwich_step(model, net, lists[i % len(lists)], x, y, opt, config, torch.bfloat16 if cuda else None)
        if cuda:
            torch.cuda.synchronize()

    run(len(lists))
    start = time.perf_counter()
    run(len(lists) * repeats)
    step_s = max(dist.gather((time.perf_counter() - start) / (len(lists) * repeats)))
    return step_s, net, opt


def subnet_evaluator(archs: Mapping[str, Arch], calib_batches: Batches, eval_batches: Batches,
                     num_calib_batches: int = 20, autocast_dtype: torch.dtype | None = None,
                     prefix: str = "val_acc") -> Evaluator:
    """An evaluator for :func:`train_supernet`: BN-recalibrated accuracy of each named arch,
    reported as ``{prefix}_{name}``."""
    names = list(archs)

    def evaluate(supernet: Supernet) -> dict[str, float]:
        accs = evaluate_archs(supernet, [archs[n] for n in names], calib_batches, eval_batches,
                              num_calib_batches, autocast_dtype)
        return {f"{prefix}_{n}": a for n, a in zip(names, accs)}

    return evaluate


def train_supernet(supernet: Supernet, train_batches: EpochBatches, steps_per_epoch: int, config: TrainConfig,
                   checkpoint: str | Path | None = None, *, metrics_path: str | Path | None = None,
                   resume: bool = False, evaluate: Evaluator | None = None, eval_every: int = 1,
                   checkpoint_every: int = 1, meta: Mapping | None = None, dist: DistContext | None = None,
                   progress: bool = True, time_limit_s: float | None = None) -> list[dict]:
    """Train ``supernet`` for ``config.epochs`` epochs; return the per-epoch metric records.

    ``train_batches(epoch)`` yields ``steps_per_epoch`` global batches ``(x, y)`` on the training
    device; for an exact resume it must depend only on ``epoch`` (e.g. a generator seeded with it).
    Under DDP (``dist``), every rank gets the same global batch and keeps its slice.
    ``checkpoint`` is written (atomically) after every ``checkpoint_every`` epochs and the last,
    with ``train_state`` = optimizer, scheduler, epoch, step, RNG states, config and metrics;
    ``resume=True`` continues from it exactly when it exists. ``evaluate(supernet)`` runs every
    ``eval_every`` epochs and the last (rank 0) without disturbing training (BN statistics,
    active subnet and RNG states are restored afterwards). The metrics log (JSON lines) goes to
    ``metrics_path``. On CUDA: bf16 autocast and channels-last. With ``config.ema_decay`` the
    checkpoint, the evaluations and the model left behind hold the weights' moving average.

    ``time_limit_s``: a guard for a planned time budget. After an epoch, when the seconds since
    this call plus that epoch's would pass the limit on any rank, every rank stops there together
    (the decision is all-reduced: no rank waits for one that left); that epoch is evaluated and
    checkpointed as the last, its record says ``"stopped": "time_limit"``, and ``resume=True``
    finishes the planned epochs later. The limit counts from this call, a resumed one too; under
    DDP every rank passes a limit (its value may differ) or none, as the check is a collective.

    Resume on another number of processes (``dist.world_size``): global batch, steps per epoch,
    the step counter and so the learning-rate schedule, the data order (epoch ``e``'s global
    batches depend on the seed and ``e`` only) and the subnets of every step (one arch RNG, the
    same on all ranks) continue as in an uninterrupted run. Not the same: per-sample random draws
    on each rank's slice (dropout, Cutout on the teacher), BatchNorm's batch statistics (per rank,
    over its slice) and the floating-point order of the gradient average, so weights agree with an
    uninterrupted run in distribution, not bit for bit. Records carry ``world_size``, and on CUDA
    ``peak_mem_mib``: each rank's peak allocated memory so far.
    """
    dist = dist or DistContext(device=next(supernet.parameters()).device)
    device = dist.device
    for name, value in (("steps_per_epoch", steps_per_epoch), ("eval_every", eval_every),
                        ("checkpoint_every", checkpoint_every)):
        _check(value, name, int, lambda v: v >= 1, "an int >= 1")
    cuda = device.type == "cuda"
    supernet.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    autocast_dtype = torch.bfloat16 if cuda else None
    optimizer = build_optimizer(supernet, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    ema = WeightEMA(supernet, config.ema_decay) if config.ema_decay is not None else None
    arch_rng = np.random.default_rng(config.seed)
    epoch, step, history = 0, 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        if not resume:
            raise TrainingError(f"checkpoint {str(checkpoint)!r} already exists; expected resume=True "
                                "(--resume) to continue it, or another output folder")
        epoch, step, history = _load_train_state(checkpoint, supernet, optimizer, scheduler, config, arch_rng, device,
                                                 ema)
    else:
        torch.manual_seed(config.seed)
    model = wrap_model(supernet, dist)
    meta = {**(meta or {}), "train": config.to_json()}
    global_batch = config.batch_size
    started = time.perf_counter()

    for epoch in range(epoch, config.epochs):
        supernet.train()
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", progress and dist.is_main)
        sums = torch.zeros(3, device=device)  # teacher loss, student loss, teacher correct
        start = last_log = time.perf_counter()
        n = 0
        for x, y in train_batches(epoch):
            if n == steps_per_epoch:
                break
            x, y = dist.shard(x, y)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out = sandwich_step(model, supernet, sandwich_archs(supernet.space, arch_rng, config.num_random, config.students),
                                x, y, optimizer, config, autocast_dtype)
            scheduler.step()
            if ema is not None:
                ema.update(step)
            sums += torch.stack([out["loss"], out["distill_loss"], out["correct"].float() / y.shape[0]])
            n, step = n + 1, step + 1
            bar.update(1)
            if time.perf_counter() - last_log > 2.0:  # a host sync, so only every few seconds
                last_log = time.perf_counter()
                bar.set_postfix(loss=f"{sums[0].item() / n:.3f}", img_s=f"{n * global_batch / (last_log - start):.0f}")
        bar.close()
        if n < steps_per_epoch:
            raise TrainingError(f"train_batches({epoch}) yielded {n} batches; expected steps_per_epoch={steps_per_epoch}")
        sums = dist.mean(sums / n).tolist()
        seconds = time.perf_counter() - start
        _check_not_diverged(sums[0], epoch + 1, supernet.space.config.num_classes, config)
        record = {"epoch": epoch + 1, "step": step, "loss": sums[0], "distill_loss": sums[1],
                  "train_acc_largest": sums[2], "lr": optimizer.param_groups[0]["lr"], "time_s": seconds,
                  "img_per_s": steps_per_epoch * global_batch / seconds, "world_size": dist.world_size}
        if cuda:
            record["peak_mem_mib"] = dist.gather(torch.cuda.max_memory_allocated(device) / 2**20)
        last = epoch + 1 == config.epochs
        if not last and time_limit_s is not None and dist.agree(
                time.perf_counter() - started + seconds > time_limit_s):
            record["stopped"], last = "time_limit", True
        if evaluate is not None and dist.is_main and ((epoch + 1) % eval_every == 0 or last):
            with _averaged(ema):  # evaluations see what the checkpoint holds
                record.update(_evaluate_quietly(evaluate, supernet, arch_rng, device))
        history.append(record)
        if dist.is_main:
            if progress:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                      file=sys.stderr)
            if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or last):
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch + 1, "step": step, "rng": capture_rng(arch_rng, device),
                         "config": config.to_json(), "history": history, "steps_per_epoch": steps_per_epoch}
                with _averaged(ema) as raw:
                    if raw is not None:
                        state["ema_raw"] = raw  # the model is saved averaged; these resume training
                    save_supernet(checkpoint, supernet, {**meta, "epoch": epoch + 1}, train_state=state)
            if metrics_path is not None:
                write_metrics(metrics_path, history)
        dist.barrier()
        if last:
            break
    if ema is not None:
        ema.apply()  # the trained model is the average, as in the checkpoint
    return history


def _averaged(ema: WeightEMA | None):
    """The model with its averaged weights for the block (yielding the raw ones), or unchanged
    (yielding None) without EMA."""
    return ema.swapped() if ema is not None else nullcontext()


def _check_not_diverged(loss: float, epoch: int, num_classes: int, config: TrainConfig) -> None:
    """Raise a TrainingError if an epoch's mean teacher loss shows divergence (non-finite, or over
    :data:`DIVERGED_LOSS_FACTOR` x ln(num_classes))."""
    limit = DIVERGED_LOSS_FACTOR * math.log(max(num_classes, 2))
    if not math.isfinite(loss) or loss > limit:
        raise TrainingError(f"training diverged in epoch {epoch}: largest subnet's mean loss {loss:.4g} > {limit:.3g} "
                            f"({DIVERGED_LOSS_FACTOR:g} x ln {num_classes} classes) at peak lr {config.peak_lr:g}; "
                            "expected a lower --lr (the last checkpoint is kept)")


def _load_train_state(path, supernet: Supernet, optimizer, scheduler, config: TrainConfig,
                      arch_rng: np.random.Generator, device: torch.device,
                      ema: WeightEMA | None = None) -> tuple[int, int, list[dict]]:
    """Restore weights, optimizer, schedule and RNG from a checkpoint; return (epoch, step, history)."""
    blob = read_checkpoint(path)
    if blob["space_fingerprint"] != supernet.space.fingerprint:
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to space {blob['space_fingerprint']}; "
                              f"expected space {supernet.space.name!r} ({supernet.space.fingerprint})")
    state = blob.get("train_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no train_state; expected one written by train_supernet")
    saved = saved_config(state)
    changed = [f"{k}={v!r} (checkpoint: {saved.get(k)!r})" for k, v in config.to_json().items() if saved.get(k) != v]
    if changed:
        raise TrainingError(f"cannot resume {str(path)!r} with different settings: {', '.join(changed)}; "
                            "expected the settings it was started with")
    supernet.load_state_dict(blob["model"])
    if ema is not None:
        ema.restore([t.to(device) for t in state["ema_raw"]])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], arch_rng, device)
    return state["epoch"], state["step"], list(state["history"])


def _evaluate_quietly(evaluate: Evaluator, supernet: Supernet, arch_rng: np.random.Generator,
                      device: torch.device) -> dict[str, float]:
    """Run ``evaluate`` and undo its side effects on training (BN statistics, active subnet,
    RNG states, train mode), so a run with evaluation trains exactly like one without."""
    buffers = {k: v.clone() for k, v in supernet.named_buffers()}
    rng = capture_rng(arch_rng, device)
    active = supernet.active_arch
    try:
        return dict(evaluate(supernet))
    finally:
        for k, v in supernet.named_buffers():
            v.copy_(buffers[k])
        restore_rng(rng, arch_rng, device)
        supernet.set_active(active)
        supernet.train()


class _LinePrinter:
    """Stand-in for tqdm where it is not installed: a line on stderr every ~10% of an epoch."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.postfix, self.start = total, desc, 0, "", time.perf_counter()

    def update(self, k: int) -> None:
        self.n += k
        if self.n == self.total or self.n % max(1, self.total // 10) == 0:
            print(f"{self.desc}: {self.n}/{self.total} {time.perf_counter() - self.start:.1f}s {self.postfix}",
                  file=sys.stderr)

    def set_postfix(self, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        pass


class _Silent:
    """Progress reporter that reports nothing (other ranks, progress=False)."""

    def update(self, k: int) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (a plain line printer if tqdm is missing), or nothing."""
    if not enabled:
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _LinePrinter(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
