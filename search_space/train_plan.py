"""How many epochs fit a time budget: measured on a throw-away supernet, not guessed.

Timed sandwich steps (:func:`search_space.training.time_sandwich_steps`), one evaluation and one
checkpoint save give the cost of an epoch; the plan is then the most epochs whose training,
evaluations (~10 per run) and checkpoints fit the budget, so the cosine schedule ends exactly at
the last epoch.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

from .checkpoint import save_supernet
from .space import SearchSpace
from .train_dist import DistContext
from .training import Evaluator, TrainConfig, time_sandwich_steps

# The probe repeats a few sandwiches; training draws fresh ones every step. On an H200
# (2026-11-30) training epochs took 1.15-1.26x the probe's estimate at batch 512
# (experiments/results/supernet_cifar/cifar_cutout_ab.md) but 1.05x at batch 1024 and 2048
# (cifar_batch_ab.md), and the first epoch 23-40 s more than the others (cuDNN's first call of
# every new conv shape). CPU runs showed neither, so the corrections apply on CUDA only.
CUDA_EPOCH_SLOWDOWN, CUDA_FIRST_EPOCH_EXTRA_S = 1.08, 35.0


def plan_epochs(space: SearchSpace, config: TrainConfig, probe_batches: Iterable, steps_per_epoch: int,
                budget_s: float, device: torch.device, evaluate: Evaluator | None = None,
                subnet_lists: int = 10, dist: DistContext | None = None) -> dict:
    """The plan for training ``config`` within ``budget_s`` seconds: epochs,
    eval_every, checkpoint_every, plus the measured step, evaluation and save seconds.

    ``probe_batches`` must yield at least ``4 * subnet_lists`` training batches; ``evaluate`` is
    the run's evaluator (timed once on the probe supernet) or None.

    Under DDP (``dist``) all ranks time the DDP steps together; as in training, rank 0 alone
    evaluates and saves, and every rank gets rank 0's plan."""
    if budget_s <= 0:
        raise ValueError(f"budget_s={budget_s!r} is invalid; expected a positive number of seconds")
    dist = dist or DistContext(device=device)
    step_s, net, opt = time_sandwich_steps(space, config, probe_batches, device, subnet_lists=subnet_lists, dist=dist)
    eval_s = save_s = 0.0
    if dist.is_main:
        if evaluate is not None:
            start = time.perf_counter()
            evaluate(net)
            eval_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="hwnas_plan_") as tmp:
            start = time.perf_counter()
            save_supernet(Path(tmp) / "probe.pt", net, {}, train_state={"optimizer": opt.state_dict()})
            save_s = time.perf_counter() - start
    del net, opt
    eval_s, save_s = dist.share((eval_s, save_s))
    cuda = device.type == "cuda"
    budget = budget_s * 0.97 - (CUDA_FIRST_EPOCH_EXTRA_S if cuda else 0.0)  # 3% margin for speed drift
    epoch_s = steps_per_epoch * step_s * (CUDA_EPOCH_SLOWDOWN if cuda else 1.0)
    # Evaluate ~10 times per run; save every epoch unless saving would cost over 3% of the budget.
    epochs, eval_every, ckpt_every = 1, 1, 1
    for _ in range(3):  # fixed point: the intervals depend on the epochs and back
        per_epoch = epoch_s + eval_s / eval_every + save_s / ckpt_every
        epochs = max(1, int((budget - eval_s) // per_epoch))  # a final test evaluation costs ~eval_s
        eval_every = max(1, epochs // 10)
        ckpt_every = max(1, math.ceil(save_s * epochs / (0.03 * max(budget, 1e-9))))
    return {"step_s": step_s, "eval_s": eval_s, "save_s": save_s, "epoch_s_estimate": epoch_s,
            "epochs": epochs, "eval_every": eval_every, "checkpoint_every": ckpt_every, "budget_s": budget_s}
