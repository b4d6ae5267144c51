"""Wiring :mod:`hwnas.datasets` to :mod:`search_space.training`: a dataset loaded for a space,
the training batches of an epoch, BN-recalibration and evaluation batches. ``hwnas supernet``,
``hwnas predictor``, the pipeline and experiment scripts all take their batches from here."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from hwnas.datasets import AUGMENTATIONS, DatasetBundle, DatasetError, Split, iterate_batches, load_dataset
from search_space import SearchSpace, UserError
from search_space.evaluation import Batches
from search_space.training import EpochBatches, TrainConfig


def load_for_space(dataset: str, data: str | None, space: SearchSpace, *, seed: int = 0,
                   val_fraction: float = 0.1, device: torch.device | str = "cpu") -> DatasetBundle:
    """Load ``dataset`` onto ``device``, checking its channels and classes fit ``space``."""
    bundle = load_dataset(dataset, data, val_fraction=val_fraction, seed=seed)
    cfg = space.config
    if (bundle.in_channels, bundle.num_classes) != (cfg.in_channels, cfg.num_classes):
        raise DatasetError(f"dataset {dataset!r} has {bundle.in_channels}-channel images and {bundle.num_classes} "
                           f"classes; space {space.name!r} expects {cfg.in_channels} channels and "
                           f"{cfg.num_classes} classes")
    return bundle.to(device)


def epoch_batches(bundle: DatasetBundle, batch_size: int, seed: int, device: torch.device,
                  augment: str | None = None) -> EpochBatches:
    """Shuffled, augmented training batches; epoch ``e``'s order depends only on (seed, e), so a
    resumed run sees the same data as an uninterrupted one. ``augment`` replaces the dataset's
    own augmentation (one of ``hwnas.datasets.AUGMENTATIONS``) for these batches only: BN
    recalibration keeps the dataset's, whose statistics match the test images better."""
    if augment is not None:
        if augment not in AUGMENTATIONS:
            raise UserError(f"augment {augment!r} is unknown; expected one of {', '.join(AUGMENTATIONS)}")
        bundle = dataclasses.replace(bundle, augment=augment)

    def batches(epoch: int):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)
        return iterate_batches(bundle.train, bundle, batch_size, train=True, generator=gen, device=device)

    return batches


def probe_batches(bundle: DatasetBundle, config: TrainConfig, device: torch.device) -> Iterable[tuple]:
    """Training batches for timing probes (search_space.train_plan), as many as asked for: further
    shuffled passes when one epoch is not enough, seeded apart from the run's own epochs."""
    for seed in range(config.seed + 1, config.seed + 1_000):
        yield from epoch_batches(bundle, config.batch_size, seed, device, config.augment)(0)


def calibration_batches(bundle: DatasetBundle, batch_size: int, device: torch.device, seed: int = 0) -> Batches:
    """Shuffled, augmented training batches for BN recalibration, the same on every call (the
    training set is sorted by class, so unshuffled batches would give one-class statistics)."""
    return lambda: iterate_batches(bundle.train, bundle, min(batch_size, len(bundle.train)), train=True,
                                   generator=torch.Generator(device=device).manual_seed(seed), device=device)


def split_batches(split: Split, bundle: DatasetBundle, batch_size: int) -> Batches:
    """Every sample of ``split`` in order, without augmentation."""
    return lambda: iterate_batches(split, bundle, batch_size, train=False)
