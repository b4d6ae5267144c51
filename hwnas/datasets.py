"""Image-classification datasets for hwnas, held whole in memory as uint8 tensors.

Every dataset becomes a :class:`DatasetBundle` of three :class:`Split` s (train, a
deterministic stratified validation part carved out of the official training set, and
the untouched test set).  Images stay uint8 (a quarter of the float32 footprint) and
:func:`iterate_batches` turns them into normalised, augmented float batches on the
target device with vectorised tensor ops only: no per-image Python work, no DataLoader.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from search_space.augment import cutout
from search_space.errors import UserError
from search_space.io import atomic_write

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "DatasetError",
    "Split",
    "cache_dir",
    "iterate_batches",
    "load_dataset",
    "stratified_holdout",
]

DATASETS: tuple[str, ...] = (
    "digits",
    "fashion-mnist",
    "cifar10-jpeg",
    "cifar10",
    "cifar100",
    "image-folder",
)

AUGMENTATIONS: tuple[str, ...] = ("crop_flip", "crop", "none", "crop_flip_cutout")

# Published per-channel statistics (in [0, 1] units) of the official training sets.
_FASHION_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_FASHION_FILE = "fashion_mnist.npz"
_FASHION_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CIFAR_JPEG_FILE = "cifar10_jpeg.npz"
_CIFAR_JPEG_KEYS = (
    "train_jpeg", "train_offsets", "train_labels",
    "test_jpeg", "test_offsets", "test_labels",
)
_DIGITS_TEST_FRACTION = 0.2
# The digits test split is fixed (independent of `seed`) so that test accuracies of
# runs with different seeds are measured on the same images, as for the other datasets.
_DIGITS_TEST_SEED = 12345
_DEFAULT_FOLDER_SIZE = 32
# Native image side per dataset; image-folder has none (its images are resized on load).
_NATIVE_SIZE = {"digits": 8, "fashion-mnist": 28, "cifar10-jpeg": 32, "cifar10": 32, "cifar100": 32}


class DatasetError(UserError):
    """Bad dataset input; the message is one line naming the bad value and what was expected."""


# ----------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One split, whole, as tensors: ``x`` uint8 (N, C, H, W) and ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        """Return a copy with both tensors on ``device`` (no copy if already there)."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DatasetBundle:
    """A loaded dataset: train / val / test splits plus what is needed to feed a model."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    def to(self, device: torch.device | str) -> "DatasetBundle":
        """Return a copy whose three splits live on ``device``."""
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
        )


# ----------------------------------------------------------------------------- public entry


def load_dataset(
    name: str,
    data_path: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
) -> DatasetBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) as a :class:`DatasetBundle` on the CPU.

    ``data_path`` is the file or directory to read (see each dataset); ``val_fraction`` of
    each class of the official training set is held out as ``val``, chosen by ``seed``.
    ``image_size`` sets the stored size of ``image-folder`` images (default 32); for the
    other datasets it may only equal the native size (resize on the fly in
    :func:`iterate_batches` instead).
    """
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    _check_fraction(val_fraction)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size={image_size!r} is invalid; expected a positive int")
    native = _NATIVE_SIZE.get(name)
    # Checked before loading so a bad value fails fast instead of after a long decode.
    if image_size is not None and native is not None and image_size != native:
        raise DatasetError(
            f"image_size={image_size} differs from the native {native} of {name!r}; "
            "pass image_size to iterate_batches to resize on the fly"
        )
    path = Path(data_path).expanduser() if data_path is not None else None
    return _LOADERS[name](path, val_fraction, seed, image_size)


def cache_dir() -> Path:
    """The user cache directory: ``$HWNAS_CACHE`` or ``~/.cache/hwnas``."""
    return Path(os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas").expanduser()


# ----------------------------------------------------------------------------- batching


def iterate_batches(
    split: Split,
    bundle: DatasetBundle,
    batch_size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    image_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``split``: x ``dtype`` (B, C, S, S) normalised, y int64.

    ``bundle`` supplies mean/std, the augmentation and the native size.  ``train=True``
    shuffles, augments and drops the last incomplete batch; ``train=False`` keeps order
    and every sample.  Random numbers come from ``generator`` (drawn on its own device,
    so a CPU generator gives the same batches on every device) or from torch's global
    RNG when it is None.  ``device`` defaults to the split's device; the split is moved
    there once, whole.  ``image_size`` resizes (bilinear) when it differs from native.
    """
    # Validate here, eagerly: a generator function would only fail at the first next().
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size={batch_size!r} is invalid; expected a positive int")
    if train and len(split) < batch_size:
        # drop_last would silently yield nothing: a training loop would do zero steps.
        raise DatasetError(f"batch_size={batch_size} exceeds the {len(split)} samples of the split")
    if bundle.augment not in AUGMENTATIONS:
        raise DatasetError(f"augment={bundle.augment!r} is unknown; expected one of {AUGMENTATIONS}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size={image_size!r} is invalid; expected a positive int")
    device = torch.device(device) if device is not None else split.x.device
    return _batch_stream(split, bundle, batch_size, train, generator, device, dtype, image_size)


def _batch_stream(
    split: Split, bundle: DatasetBundle, batch_size: int, train: bool,
    generator: torch.Generator | None, device: torch.device, dtype: torch.dtype,
    image_size: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The generator behind :func:`iterate_batches` (arguments already validated)."""
    x_all, y_all = split.x.to(device), split.y.to(device)  # whole split, moved once
    n = len(split)
    to_float = _normaliser(bundle, device, dtype)
    out_size = image_size if image_size is not None else bundle.image_size
    rand = _RandomSource(generator, device)

    if train:
        order = rand.permutation(n)
        starts = range(0, n - batch_size + 1, batch_size)
    else:
        order = None
        starts = range(0, n, batch_size)
    for start in starts:
        if order is None:
            xb, yb = x_all[start:start + batch_size], y_all[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x_all[idx], y_all[idx]
        if train:
            xb = _augment(xb, bundle.augment, rand)
        xb = to_float(xb)
        if train and bundle.augment.endswith("_cutout"):
            xb = _cutout(xb, rand)
        if out_size != xb.shape[-1]:
            xb = F.interpolate(xb, size=(out_size, out_size), mode="bilinear",
                               align_corners=False, antialias=False)
        yield xb, yb


class _RandomSource:
    """Draws random tensors from one generator and hands them over on the target device."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        # Draw where the generator lives (torch requires it); with no generator, draw
        # directly on the target device from the global RNG.
        self.draw_device = generator.device if generator is not None else device
        self.device = device

    def permutation(self, n: int) -> torch.Tensor:
        """A random permutation of ``range(n)``."""
        perm = torch.randperm(n, generator=self.generator, device=self.draw_device)
        return perm.to(self.device)

    def integers(self, high: int, size: tuple[int, ...]) -> torch.Tensor:
        """Uniform ints in ``[0, high)``."""
        out = torch.randint(0, high, size, generator=self.generator, device=self.draw_device)
        return out.to(self.device)

    def coins(self, n: int) -> torch.Tensor:
        """``n`` fair booleans."""
        out = torch.rand(n, generator=self.generator, device=self.draw_device) < 0.5
        return out.to(self.device)


def _normaliser(
    bundle: DatasetBundle, device: torch.device, dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 -> ``dtype``, normalised as ``(x/255 - mean) / std`` in one multiply-subtract."""
    mean = torch.tensor(bundle.mean, dtype=torch.float64)
    std = torch.tensor(bundle.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device=device, dtype=dtype)
    shift = (mean / std).view(1, -1, 1, 1).to(device=device, dtype=dtype)
    return lambda x: x.to(dtype).mul_(scale).sub_(shift)


def _augment(x: torch.Tensor, augment: str, rand: _RandomSource) -> torch.Tensor:
    """Apply ``augment`` to a uint8 batch, vectorised (before normalising, so the crop
    padding is black, as in torchvision's RandomCrop(padding=...))."""
    if augment == "none":
        return x
    x = _random_crop(x, _crop_padding(x.shape[-1]), rand)
    if augment.startswith("crop_flip"):
        flip = rand.coins(x.shape[0]).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
    return x


def _cutout(x: torch.Tensor, rand: _RandomSource) -> torch.Tensor:
    """:func:`search_space.augment.cutout` at centres drawn from ``rand``."""
    return cutout(x, rand.integers(x.shape[-2], (2, x.shape[0])))


def _crop_padding(size: int) -> int:
    """Crop padding: 4 px for 32 px images, size/8 in general, at least 1 px."""
    return max(1, size // 8)


def _random_crop(x: torch.Tensor, pad: int, rand: _RandomSource) -> torch.Tensor:
    """Zero-pad by ``pad`` and cut an HxW window at a random offset per sample,
    with two gathers (rows, then columns) instead of a Python loop."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = rand.integers(2 * pad + 1, (2, n))
    rows = offsets[0].view(n, 1) + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[1].view(n, 1) + torch.arange(w, device=x.device)  # (n, w)
    rows = rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = cols.view(n, 1, 1, w).expand(n, c, h, w)
    return x.gather(3, cols)


# ----------------------------------------------------------------------------- splitting


def _check_fraction(val_fraction: float) -> None:
    """Reject a validation fraction outside the open interval (0, 1)."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction={val_fraction!r} is invalid; expected a number in (0, 1)")


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out), holding out ``fraction`` of every class.

    Deterministic for a given ``seed``; both index arrays are sorted.  Each class with at
    least two samples keeps at least one and gives at least one.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = int(round(len(members) * fraction))
        k = min(max(k, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out, assume_unique=True)
    return kept, held_out


def _make_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> Split:
    """Build a Split from NCHW uint8 / integer label arrays, optionally taking ``idx``."""
    if idx is not None:
        x, y = x[idx], y[idx]
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)),
                 torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _train_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve the stratified validation part out of an official training set."""
    kept, held = stratified_holdout(y, val_fraction, seed)
    return _make_split(x, y, kept), _make_split(x, y, held)


def _channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0,1] units of a uint8 NCHW tensor, in chunks (memory)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _bundle(name: str, train: Split, val: Split, test: Split, num_classes: int,
            stats: tuple[tuple[float, ...], tuple[float, ...]] | None, augment: str) -> DatasetBundle:
    """Assemble a bundle; ``stats=None`` computes mean/std from the train split."""
    mean, std = stats if stats is not None else _channel_stats(train.x)
    return DatasetBundle(
        name=name, train=train, val=val, test=test, num_classes=num_classes,
        in_channels=int(train.x.shape[1]), image_size=int(train.x.shape[2]),
        mean=tuple(mean), std=tuple(std), augment=augment,
    )


# ----------------------------------------------------------------------------- file helpers


def _resolve_file(name: str, path: Path | None, filename: str) -> Path:
    """``path`` itself if it is a file, else ``path/filename``; DatasetError if absent."""
    if path is None:
        raise DatasetError(
            f"dataset {name!r} needs data_path (--data-dir): the {filename} file or a directory containing it"
        )
    candidate = path / filename if path.is_dir() else path
    if not candidate.is_file():
        raise DatasetError(f"data path {str(candidate)!r} does not exist; expected the {filename} file of {name!r}")
    return candidate


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read ``keys`` from an npz file, naming missing keys in a DatasetError."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {str(path)!r} as .npz: {exc}".replace("\n", " ")) from exc
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise DatasetError(
                f"{str(path)!r} lacks keys {missing}; expected {list(keys)}, found {archive.files}"
            )
        return {k: archive[k] for k in keys}


def _check_images(path: Path, key: str, arr: np.ndarray, ndim: int) -> None:
    """Reject an image array of the wrong dtype or rank."""
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise DatasetError(
            f"{str(path)!r}[{key!r}] is {arr.dtype} with shape {arr.shape}; expected uint8 with {ndim} dims"
        )


def _check_labels(path: Path, key: str, labels: np.ndarray, n: int) -> None:
    """Reject a label array whose length differs from the image count."""
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DatasetError(f"{str(path)!r}[{key!r}] has shape {labels.shape}; expected ({n},) labels")


# ----------------------------------------------------------------------------- digits


def _load_digits(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """sklearn's embedded 8x8 digits (no files); fixed stratified 20% test, then val."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    # Values are 0..16 grey levels; map to the usual 0..255 pixel range.
    x = np.rint(raw.data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = raw.target.astype(np.int64)
    rest, test_idx = stratified_holdout(y, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    train_idx, val_idx = stratified_holdout(y[rest], val_fraction, seed)
    train = _make_split(x, y, rest[train_idx])
    val = _make_split(x, y, rest[val_idx])
    test = _make_split(x, y, test_idx)
    # Digits are not mirror-symmetric, so no flip: only a small (1 px) shift.
    return _bundle("digits", train, val, test, 10, None, "crop")


# ----------------------------------------------------------------------------- fashion-mnist


def _load_fashion(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """Fashion-MNIST from an npz with x_train/y_train/x_test/y_test (28x28 uint8)."""
    file = _resolve_file("fashion-mnist", path, _FASHION_FILE)
    arrays = _load_npz(file, _FASHION_KEYS)
    for part in ("train", "test"):
        _check_images(file, f"x_{part}", arrays[f"x_{part}"], 3)
        _check_labels(file, f"y_{part}", arrays[f"y_{part}"], arrays[f"x_{part}"].shape[0])
    x_train = arrays["x_train"][:, None]
    train, val = _train_val(x_train, arrays["y_train"], val_fraction, seed)
    test = _make_split(arrays["x_test"][:, None], arrays["y_test"])
    return _bundle("fashion-mnist", train, val, test, 10, _FASHION_STATS, "crop_flip")


# ----------------------------------------------------------------------------- cifar10-jpeg


def _load_cifar_jpeg(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """JPEG-CIFAR-10 from an npz of concatenated JPEG bytes, decoded once and cached."""
    file = _resolve_file("cifar10-jpeg", path, _CIFAR_JPEG_FILE)
    arrays = _load_npz(file, _CIFAR_JPEG_KEYS)
    n_train = _check_jpeg_part(file, arrays, "train")
    n_test = _check_jpeg_part(file, arrays, "test")
    images = _cached_jpeg_decode(file, arrays, n_train + n_test)
    train, val = _train_val(images[:n_train], arrays["train_labels"], val_fraction, seed)
    test = _make_split(images[n_train:], arrays["test_labels"])
    return _bundle("cifar10-jpeg", train, val, test, 10, _CIFAR10_STATS, "crop_flip")


def _check_jpeg_part(path: Path, arrays: dict[str, np.ndarray], part: str) -> int:
    """Check one split's offsets/labels agree; return its image count."""
    offsets, labels = arrays[f"{part}_offsets"], arrays[f"{part}_labels"]
    n = offsets.shape[0] - 1
    if offsets.ndim != 1 or n < 0 or offsets[-1] != arrays[f"{part}_jpeg"].shape[0]:
        raise DatasetError(f"{str(path)!r}[{part + '_offsets'!r}] does not match {part + '_jpeg'!r}")
    _check_labels(path, f"{part}_labels", labels, n)
    return n


def _file_fingerprint(path: Path) -> str:
    """Short content hash (size + first and last MiB): cheap, and survives copies
    of the file (unlike mtime), so a moved dataset reuses its cache."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _cached_jpeg_decode(path: Path, arrays: dict[str, np.ndarray], total: int) -> np.ndarray:
    """Decoded train+test images (N, 3, 32, 32) uint8, from the cache or by decoding."""
    cache = cache_dir() / f"cifar10_jpeg_{_file_fingerprint(path)}.npy"
    if cache.is_file():
        try:
            images = np.load(cache, allow_pickle=False)
            if images.shape == (total, 3, 32, 32) and images.dtype == np.uint8:
                return images
        except (OSError, ValueError):
            pass  # corrupt or truncated cache: decode again and overwrite it
    parts = [(arrays[f"{p}_jpeg"], arrays[f"{p}_offsets"]) for p in ("train", "test")]
    images = np.concatenate([decode_jpegs(buf, off) for buf, off in parts])
    _atomic_save(cache, images)
    return images


def _atomic_save(target: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``target`` atomically, so concurrent readers never see a partial
    file; a failure (read-only home) only warns: the cache is an optimisation."""
    try:
        atomic_write(target, lambda fh: np.save(fh, array))
    except OSError as exc:
        warnings.warn(f"hwnas: could not write dataset cache {target}: {exc}", stacklevel=3)


def decode_jpegs(buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode concatenated 32x32 RGB JPEGs to (N, 3, 32, 32) uint8, in a process pool
    when more than one CPU is available (decoding is CPU-bound and holds the GIL)."""
    n = offsets.shape[0] - 1
    workers = min(_cpu_count(), 16)
    n_chunks = 1 if workers == 1 or n < 512 else workers * 4
    bounds = np.linspace(0, n, n_chunks + 1).astype(np.int64)
    tasks = [
        (buffer[offsets[a]:offsets[b]].tobytes(), offsets[a:b + 1] - offsets[a])
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    if n_chunks == 1:
        chunks = [_decode_chunk(t) for t in tasks]
    else:
        with _pool_context().Pool(workers) as pool:
            chunks = pool.map(_decode_chunk, tasks)
    return np.concatenate(chunks) if chunks else np.zeros((0, 3, 32, 32), np.uint8)


def _decode_chunk(task: tuple[bytes, np.ndarray]) -> np.ndarray:
    """Worker: decode one run of JPEGs (module-level so it pickles)."""
    from PIL import Image

    data, offsets = task
    out = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]])) as img:
            rgb = np.asarray(img.convert("RGB"))
        if rgb.shape != (32, 32, 3):
            raise DatasetError(f"JPEG image {i} of a chunk is {rgb.shape}; expected (32, 32, 3)")
        out[i] = rgb
    return out.transpose(0, 3, 1, 2).copy()


def _cpu_count() -> int:
    """CPUs this process may use (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where available: workers start instantly instead of re-importing torch
    (they only run Pillow/numpy, so forking a process that uses torch is safe)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


# ----------------------------------------------------------------------------- torchvision cifar


def _load_cifar_torchvision(name: str, path: Path | None, val_fraction: float, seed: int) -> DatasetBundle:
    """CIFAR-10/100 via torchvision at ``path`` (default cache), downloading if missing."""
    from torchvision import datasets

    cls, num_classes, stats = {
        "cifar10": (datasets.CIFAR10, 10, _CIFAR10_STATS),
        "cifar100": (datasets.CIFAR100, 100, _CIFAR100_STATS),
    }[name]
    root = path if path is not None else cache_dir() / "torchvision"
    train_ds = _torchvision_split(cls, root, name, train=True)
    test_ds = _torchvision_split(cls, root, name, train=False)
    x_train = np.asarray(train_ds.data).transpose(0, 3, 1, 2)
    train, val = _train_val(x_train, np.asarray(train_ds.targets), val_fraction, seed)
    test = _make_split(np.asarray(test_ds.data).transpose(0, 3, 1, 2), np.asarray(test_ds.targets))
    return _bundle(name, train, val, test, num_classes, stats, "crop_flip")


def _torchvision_split(cls: type, root: Path, name: str, *, train: bool):
    """Open one split from ``root``; download only when the files are missing."""
    try:
        return cls(root=str(root), train=train, download=False)
    except RuntimeError:
        pass  # files missing or corrupt: try to download them
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # no network, HTTP error, bad archive, unwritable root...
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise DatasetError(
            f"{name!r} is not in {str(root)!r} and could not be downloaded ({reason}); "
            "pass --data-dir with the extracted dataset"
        ) from exc


def _load_cifar10(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """CIFAR-10 through torchvision."""
    return _load_cifar_torchvision("cifar10", path, val_fraction, seed)


def _load_cifar100(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """CIFAR-100 through torchvision."""
    return _load_cifar_torchvision("cifar100", path, val_fraction, seed)


# ----------------------------------------------------------------------------- image folder


def _load_image_folder(path: Path | None, val_fraction: float, seed: int, image_size: int | None) -> DatasetBundle:
    """ImageFolder layout: ``train/<class>/*`` plus ``test/`` (preferred) or ``val/`` as
    the test split; images stored RGB at ``image_size`` (default 32)."""
    if path is None or not path.is_dir():
        raise DatasetError(
            f"image-folder data path {str(path)!r} is not a directory; expected one with train/ and val/ (or test/)"
        )
    size = image_size if image_size is not None else _DEFAULT_FOLDER_SIZE
    train_dir = path / "train"
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetError(f"image-folder {str(path)!r} lacks train/ or val/ (or test/) subdirectories")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"image-folder {str(train_dir)!r} has no class subdirectories")
    class_index = {c: i for i, c in enumerate(classes)}
    x_train, y_train = _read_folder(train_dir, class_index, size)
    x_test, y_test = _read_folder(test_dir, class_index, size)
    train, val = _train_val(x_train, y_train, val_fraction, seed)
    test = _make_split(x_test, y_test)
    return _bundle("image-folder", train, val, test, len(classes), None, "crop_flip")


def _list_images(root: Path, class_index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image files under ``root/<class>/`` (any depth), sorted, with their class indices."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files: list[str] = []
    labels: list[int] = []
    for cls_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        if cls_dir.name not in class_index:
            raise DatasetError(f"class folder {str(cls_dir)!r} is not among the train/ classes {sorted(class_index)}")
        found = sorted(p for p in cls_dir.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        files += [str(p) for p in found]
        labels += [class_index[cls_dir.name]] * len(found)
    if not files:
        raise DatasetError(f"image-folder {str(root)!r} contains no images; expected {IMG_EXTENSIONS} files in class folders")
    return files, labels


def _read_folder(root: Path, class_index: dict[str, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Load and resize every image of one split folder (pooled when large)."""
    files, labels = _list_images(root, class_index)
    workers = min(_cpu_count(), 16)
    if workers > 1 and len(files) >= 2000:
        chunk = max(1, len(files) // (workers * 4))
        with _pool_context().Pool(workers) as pool:
            images = pool.starmap(_load_resized, [(f, size) for f in files], chunksize=chunk)
    else:
        images = [_load_resized(f, size) for f in files]
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _load_resized(file: str, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8: shorter side resized to ``size`` (keeps the
    aspect ratio), then centre-cropped square."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            img = img.convert("RGB")
    except OSError as exc:
        raise DatasetError(f"cannot read image {file!r}: {exc}".replace("\n", " ")) from exc
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


_LOADERS: dict[str, Callable[[Path | None, float, int, int | None], DatasetBundle]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion,
    "cifar10-jpeg": _load_cifar_jpeg,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "image-folder": _load_image_folder,
}
