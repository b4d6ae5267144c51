"""Stand-alone training of one plain network (a chosen subnet or a baseline) with a fixed recipe.

Weight sharing ranks architectures; it does not deliver them: a subnet's supernet accuracy is an
estimate, so what a user deploys is trained alone and measured. Every network of a run (chosen
models and baselines) goes through :func:`train_model` with the same :class:`TrainConfig`
(the supernet trainer's optimizer, schedule, label smoothing and logit scale, with no
students), so their accuracies compare like for like.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.datasets import DatasetBundle
from search_space.checkpoint import CheckpointError
from search_space.evaluation import accuracy, fit_resolution
from search_space.io import atomic_torch_save
from search_space.training import (TrainConfig, TrainingError, _check_not_diverged, _progress, build_optimizer,
                                   build_scheduler)


def plain_config(epochs: int, batch_size: int, *, lr: float | None = None, weight_decay: float = 5e-4,
                 label_smoothing: float = 0.1, logit_scale: float = 1.0, augment: str | None = None,
                 seed: int = 0) -> TrainConfig:
    """The supernet trainer's recipe for one network: no students, no random subnets."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       label_smoothing=label_smoothing, logit_scale=logit_scale, augment=augment, seed=seed,
                       num_random=0, students="none")


def train_model(model: nn.Module, bundle: DatasetBundle, config: TrainConfig, device: torch.device,
                checkpoint: str | Path | None = None, *, progress: bool = True, desc: str = "train",
                resolution: int | None = None) -> list[dict]:
    """Train ``model`` on ``bundle.train`` (already on ``device``) for ``config.epochs``, its images
    resized to ``resolution`` where given (a subnet's own, as it is scored and exported); returns
    per-epoch records. With ``checkpoint``, state is saved (atomically) after every epoch and an
    existing one is resumed (the data order depends only on seed and epoch); a checkpoint of
    other settings is refused. On CUDA: bf16
    autocast and channels-last, as supernet training."""
    from hwnas.data_wiring import epoch_batches

    cuda = device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    steps = len(bundle.train) // config.batch_size
    if steps < 1:
        raise TrainingError(f"batch size {config.batch_size} exceeds the {len(bundle.train)} training images; "
                            "expected a smaller batch")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    epoch, history = 0, []
    if checkpoint is not None and Path(checkpoint).exists():
        epoch, history = _resume(checkpoint, model, optimizer, scheduler, config, device)
    else:
        torch.manual_seed(config.seed)
    batches = epoch_batches(bundle, config.batch_size, config.seed, device, config.augment)
    autocast = torch.bfloat16 if cuda else None
    for epoch in range(epoch, config.epochs):
        model.train()
        bar = _progress(steps, f"{desc} {epoch + 1}/{config.epochs}", progress)
        sums, start, n = torch.zeros(2, device=device), time.perf_counter(), 0
        for x, y in batches(epoch):
            if n == steps:
                break
            if resolution is not None:
                x = fit_resolution(x, resolution)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(x)
            logits = logits.float() * config.logit_scale
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach(), (logits.detach().argmax(1) == y).float().mean()])
            n += 1
            bar.update(1)
        bar.close()
        loss_mean, train_acc = (sums / max(n, 1)).tolist()
        _check_not_diverged(loss_mean, epoch + 1, int(bundle.num_classes), config)
        history.append({"epoch": epoch + 1, "loss": loss_mean, "train_acc": train_acc,
                        "time_s": time.perf_counter() - start})
        if checkpoint is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                               "config": config.to_json()}, checkpoint)
    return history


def _resume(path, model, optimizer, scheduler, config: TrainConfig, device) -> tuple[int, list[dict]]:
    """Load a :func:`train_model` checkpoint into the given objects; returns (epoch, history)."""
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"training checkpoint {str(path)!r} is not readable: {e}") from None
    if blob.get("config") != config.to_json():
        changed = sorted(k for k, v in config.to_json().items() if blob.get("config", {}).get(k) != v)
        raise TrainingError(f"cannot resume {str(path)!r} with different settings ({', '.join(changed)}); "
                            "expected the settings it was started with, or remove the file")
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    return blob["epoch"], list(blob["history"])


def evaluate_model(model: nn.Module, bundle: DatasetBundle, device: torch.device, resolution: int,
                   batch_size: int = 1000) -> dict[str, float]:
    """Validation and test accuracy of a trained ``model`` (bf16 autocast on CUDA)."""
    from hwnas.data_wiring import split_batches

    autocast = torch.bfloat16 if device.type == "cuda" else None
    model.to(device)
    return {name: accuracy(model, split_batches(split, bundle, batch_size)(), resolution, autocast)
            for name, split in (("val", bundle.val), ("test", bundle.test))}


def log(msg: str) -> None:
    """A progress line on stderr (visible in logs without a terminal)."""
    print(msg, file=sys.stderr, flush=True)
