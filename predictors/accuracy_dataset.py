"""Accuracy datasets: measured (arch, accuracy) pairs, stored as JSON lines, built resumably.

File format: the first line is a header ``{"format": "hwnas-accuracy-dataset", "version": 1,
"space": name, "space_fingerprint", "space_config", "checkpoint_hash", "dataset", "split",
"settings": {...}}``; every further line is ``{"arch": str, "accuracy": float, "flops": int}``.
The header fields that decide what an accuracy means (:data:`IDENTITY_KEYS`) must match for
a build to resume into an existing file; ``settings`` holds how accuracies were measured
(calibration and evaluation sizes), since a change there changes the numbers too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from search_space import Arch, SearchSpace, UserError
from search_space.evaluation import Batches, evaluate_archs
from search_space.io import atomic_write_text, read_text

from .sampling import sample_archs_spread

FORMAT, VERSION = "hwnas-accuracy-dataset", 1
IDENTITY_KEYS = ("space_fingerprint", "checkpoint_hash", "dataset", "split", "settings")

try:  # tqdm is optional on the GPU machine
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised only where tqdm is missing
    tqdm = None


class AccuracyDatasetError(UserError):
    """A missing, malformed or mismatching accuracy-dataset file."""


@dataclass
class AccuracyDataset:
    """A header (what the accuracies were measured on) and records (arch, accuracy, flops)."""

    header: dict
    records: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def new(cls, space: SearchSpace, checkpoint_hash: str, dataset: str, split: str,
            settings: dict | None = None) -> "AccuracyDataset":
        """An empty dataset for ``space`` measured on ``dataset``/``split`` of a checkpoint."""
        return cls({"format": FORMAT, "version": VERSION, "space": space.name,
                    "space_fingerprint": space.fingerprint, "space_config": space.config.to_json(),
                    "checkpoint_hash": checkpoint_hash, "dataset": dataset, "split": split,
                    "settings": dict(settings or {})})

    @classmethod
    def load(cls, path: str | Path) -> "AccuracyDataset":
        """Read a JSON-lines file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise AccuracyDatasetError(f"accuracy dataset {str(path)!r} not found: expected a .jsonl file "
                                       "written by 'hwnas predictor dataset'")
        lines = [l for l in read_text(path, "accuracy dataset", "a .jsonl file written by 'hwnas predictor dataset'",
                                      AccuracyDatasetError).splitlines() if l.strip()]
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise AccuracyDatasetError(f"{str(path)!r} is not an accuracy dataset: expected a first line with "
                                       f"format {FORMAT!r}")
        if header.get("version") != VERSION:
            raise AccuracyDatasetError(f"accuracy dataset {str(path)!r} has version {header.get('version')!r}, "
                                       f"expected {VERSION}")
        records = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                records.append({"arch": str(rec["arch"]), "accuracy": float(rec["accuracy"]),
                                "flops": int(rec["flops"])})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise AccuracyDatasetError(f"accuracy dataset {str(path)!r} line {i} is malformed: "
                                           'expected {"arch": str, "accuracy": float, "flops": int}') from None
        return cls(header, records)

    def save(self, path: str | Path) -> Path:
        """Write the whole file atomically (a crash leaves the previous version intact)."""
        lines = [json.dumps(self.header)] + [json.dumps(r) for r in self.records]
        return atomic_write_text(path, "\n".join(lines) + "\n")

    def space(self) -> SearchSpace:
        """The search space the archs belong to (rebuilt from the stored config)."""
        return SearchSpace.from_config(self.header["space_config"])

    def check_space(self, space: SearchSpace) -> None:
        """Refuse a dataset measured on another space's archs."""
        if space.fingerprint != self.header["space_fingerprint"]:
            raise AccuracyDatasetError(f"accuracy dataset is of space {self.header['space']!r} "
                                       f"({self.header['space_fingerprint']}), expected space {space.name!r} "
                                       f"({space.fingerprint})")

    def archs(self, space: SearchSpace | None = None) -> list[Arch]:
        """The measured archs, parsed and validated against ``space`` (default: the stored one)."""
        space = space or self.space()
        self.check_space(space)
        return [space.parse(r["arch"]) for r in self.records]

    def accuracies(self) -> np.ndarray:
        """Measured accuracies in [0, 1], in record order."""
        return np.asarray([r["accuracy"] for r in self.records], dtype=np.float64)

    def arrays(self, space: SearchSpace | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: encodings ``space.encode_many(archs)`` and accuracies, ready for ``fit``."""
        space = space or self.space()
        return space.encode_many(self.archs(space)), self.accuracies()


def _check_resumable(existing: AccuracyDataset, fresh: AccuracyDataset, path: Path) -> None:
    for key in IDENTITY_KEYS:
        if existing.header.get(key) != fresh.header[key]:
            raise AccuracyDatasetError(
                f"{str(path)!r} was built with {key}={existing.header.get(key)!r}, this run has "
                f"{key}={fresh.header[key]!r}: expected the same to resume; choose another output file")


def archs_to_measure(space: SearchSpace, archs: Sequence[Arch] | int, records: Sequence[dict], *,
                     seed: int = 0, extremes: bool = True) -> list[Arch]:
    """The archs a build of ``archs`` (a list, or ``n`` spread-sampled with seed ``seed``, the
    space's corners first with ``extremes``) still has to measure, given the ``records`` done;
    in order, without duplicates (see :func:`build_accuracy_dataset`)."""
    done = {r["arch"] for r in records}
    if isinstance(archs, int):
        corners = list(space.extremes().values()) if extremes and hasattr(space, "extremes") else []
        target = corners + sample_archs_spread(space, archs, np.random.default_rng(seed))
    else:
        target = [space.validate(a) for a in archs]
    todo = list({str(a): a for a in target if str(a) not in done}.values())
    return todo[:max(0, archs - len(records))] if isinstance(archs, int) else todo


def build_accuracy_dataset(supernet: torch.nn.Module, space: SearchSpace, archs: Sequence[Arch] | int,
                           calib_batches: Batches, eval_batches: Batches, out_path: str | Path, *,
                           checkpoint_hash: str, dataset: str, split: str = "val", num_calib_batches: int = 20,
                           autocast_dtype: torch.dtype | None = None, settings: dict | None = None,
                           seed: int = 0, time_budget_s: float | None = None, save_every_s: float = 10.0,
                           progress: bool = True, extremes: bool = True) -> AccuracyDataset:
    """Measure the accuracy of ``archs`` (or of ``n`` spread-sampled archs when an int) on a
    trained supernet, each BN-recalibrated (see ``search_space.evaluation.evaluate_archs``),
    and store them in ``out_path``.

    With an int, ``extremes`` puts the space's corner archs first (``SearchSpace.extremes``:
    largest, smallest, largest of each block type), counted in ``n``: a spread sample alone
    never holds the top of the space, so the predictor never learned it.

    Resumable: when ``out_path`` exists (same space, checkpoint, dataset, split and settings)
    archs already there are skipped; with an int, the file is topped up to ``n`` records from
    the same seeded spread sample. The file is rewritten atomically at least every
    ``save_every_s`` seconds and when stopped (also by an exception or Ctrl-C).
    ``time_budget_s`` stops measuring after that many seconds (the file stays resumable).
    """
    out_path = Path(out_path)
    data = AccuracyDataset.new(space, checkpoint_hash, dataset, split,
                               {"num_calib_batches": num_calib_batches, **(settings or {})})
    if out_path.exists():
        existing = AccuracyDataset.load(out_path)
        _check_resumable(existing, data, out_path)
        data.records = existing.records
    todo = archs_to_measure(space, archs, data.records, seed=seed, extremes=extremes)
    if not out_path.exists():
        data.save(out_path)  # the header alone: a file that exists marks the run as started
    start = last_save = time.monotonic()
    bar = tqdm(total=len(todo), desc="evaluating subnets", unit="net", disable=not progress) if tqdm else None
    try:
        for arch in todo:
            if time_budget_s is not None and time.monotonic() - start > time_budget_s:
                break
            acc = evaluate_archs(supernet, [arch], calib_batches, eval_batches, num_calib_batches, autocast_dtype)[0]
            data.records.append({"arch": str(arch), "accuracy": acc, "flops": int(space.flops(arch))})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{acc:.4f}", refresh=False)
            if time.monotonic() - last_save > save_every_s:
                data.save(out_path)
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        data.save(out_path)
    return data
