"""Tests for hwnas.datasets: loading, splitting, batching and error reporting."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwnas import datasets as ds
from hwnas.datasets import (
    DATASETS,
    DatasetBundle,
    DatasetError,
    Split,
    iterate_batches,
    load_dataset,
)

# Repo root is .../main; the shared data lives next to it in .../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared_file(name: str) -> Path:
    """Path of a shared dataset file, skipping the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def jpeg_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private HWNAS_CACHE for the whole session, so the 60k-JPEG decode runs once."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("hwnas_cache")
        mp.setenv("HWNAS_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def cifar_jpeg(jpeg_cache: Path) -> DatasetBundle:
    return load_dataset("cifar10-jpeg", _shared_file("cifar10_jpeg.npz"))


def _rows(*splits: Split) -> Counter:
    """Multiset of (image bytes, label) over splits: equal multisets mean a partition."""
    return Counter(
        (x.numpy().tobytes(), int(y)) for s in splits for x, y in zip(s.x, s.y)
    )


def _identity_stats(bundle: DatasetBundle) -> DatasetBundle:
    """Bundle whose normalisation is the identity on 0..255 values (to inspect pixels)."""
    c = bundle.in_channels
    return replace(bundle, mean=(0.0,) * c, std=(1 / 255,) * c)


# ----------------------------------------------------------------------------- digits


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "fashion-mnist", "cifar10-jpeg", "cifar10", "cifar100", "image-folder")


def test_digits_shapes_and_classes(digits: DatasetBundle) -> None:
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert digits.augment == "crop"
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.shape[0] == split.y.shape[0]
        assert set(split.y.tolist()) == set(range(10))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert abs(len(digits.test) - 0.2 * 1797) <= 10
    assert abs(len(digits.val) - 0.1 * (1797 - len(digits.test))) <= 10
    assert int(digits.train.x.max()) == 255


def test_digits_splits_partition_the_data(digits: DatasetBundle) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(np.rint(raw.data * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8))
    full = Split(x, torch.from_numpy(raw.target.astype(np.int64)))
    assert _rows(digits.train, digits.val, digits.test) == _rows(full)


def test_digits_deterministic_per_seed(digits: DatasetBundle) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(digits.val.x, other.val.x)
    assert torch.equal(digits.test.x, other.test.x)  # test split never depends on the seed
    assert _rows(digits.train, digits.val) == _rows(other.train, other.val)


def test_stratified_validation(digits: DatasetBundle) -> None:
    train_counts = torch.bincount(digits.train.y, minlength=10)
    val_counts = torch.bincount(digits.val.y, minlength=10)
    expected = torch.round((train_counts + val_counts).double() * 0.1)
    assert torch.all((val_counts.double() - expected).abs() <= 1)

    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    kept, held = ds.stratified_holdout(labels, 0.25, seed=3)
    assert np.intersect1d(kept, held).size == 0 and len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [2, 5, 8, 10]  # round(n * 0.25) per class


# ----------------------------------------------------------------------------- batching


def test_eval_batches_cover_every_sample_once(digits: DatasetBundle) -> None:
    xs, ys = zip(*iterate_batches(digits.test, digits, 100, train=False, generator=None))
    assert [len(y) for y in ys][-1] == len(digits.test) % 100  # last batch kept, smaller
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, digits.test.y)
    mean, std = torch.tensor(digits.mean), torch.tensor(digits.std)
    expected = (digits.test.x.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-5)


def test_eval_output_is_normalised(digits: DatasetBundle) -> None:
    x = torch.cat([x for x, _ in iterate_batches(digits.train, digits, 256, train=False)])
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2


def test_train_batches_are_a_seeded_permutation(digits: DatasetBundle) -> None:
    n = len(digits.train)
    tagged = Split(digits.train.x, torch.arange(n))  # labels = sample index
    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(iterate_batches(tagged, digits, 64, train=True, generator=gen))
    first, again, other = run(0), run(0), run(1)
    assert len(first) == n // 64 and all(x.shape == (64, 1, 8, 8) for x, _ in first)
    seen = torch.cat([y for _, y in first])
    assert len(set(seen.tolist())) == len(seen) == 64 * (n // 64)  # drop_last, no repeats
    assert not torch.equal(seen, torch.arange(len(seen)))  # shuffled
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])


def _window_matches(out: np.ndarray, src: np.ndarray, pad: int) -> bool:
    """Is ``out`` an HxW window of ``src`` zero-padded by ``pad``?"""
    h, w = src.shape[-2:]
    padded = np.pad(src, ((0, 0), (pad, pad), (pad, pad)))
    return any(
        np.array_equal(out, padded[:, dy:dy + h, dx:dx + w])
        for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
    )


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_augmentation_is_a_padded_crop_and_flip(digits: DatasetBundle, augment: str) -> None:
    n = 200
    tagged = Split(digits.train.x[:n], torch.arange(n))
    bundle = replace(_identity_stats(digits), augment=augment)
    gen = torch.Generator().manual_seed(0)
    x, idx = next(iterate_batches(tagged, bundle, n, train=True, generator=gen))
    assert x.shape == (n, 1, 8, 8)
    src = tagged.x[idx].float()
    assert not torch.equal(x, src)  # augmentation changed pixels
    out, src = x.numpy(), src.numpy()
    allowed = [lambda s: s] + ([lambda s: s[..., ::-1]] if augment == "crop_flip" else [])
    assert all(any(_window_matches(o, f(s), 1) for f in allowed) for o, s in zip(out, src))
    if augment == "crop_flip":  # some samples only match mirrored
        assert any(not _window_matches(o, s, 1) for o, s in zip(out, src))


def test_cutout_zeroes_one_half_size_square_per_sample(digits: DatasetBundle) -> None:
    n = 300
    # Every normalised pixel is >= 255 (value + 255), so a hole (0, the mean) is unambiguous.
    base = replace(digits, mean=(-1.0,), std=(1 / 255,))
    plain, cut = (next(iterate_batches(digits.train, replace(base, augment=a), n, train=True,
                                       generator=torch.Generator().manual_seed(0)))[0]
                  for a in ("crop_flip", "crop_flip_cutout"))
    holes = cut == 0
    assert (plain >= 255).all() and holes.any()
    assert torch.equal(cut[~holes], plain[~holes])  # same order, crop and flip; then the holes
    side = digits.image_size // 2
    sizes = []
    for hole in holes[:, 0]:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        sizes.append(len(rows))
        if len(rows):  # one rectangle: a square of half the side, cut where it crosses the border
            assert hole.sum() == len(rows) * len(cols) and len(rows) <= side and len(cols) <= side
            assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    assert max(sizes) == side


def test_no_augmentation_and_resize(digits: DatasetBundle) -> None:
    bundle = replace(_identity_stats(digits), augment="none")
    tagged = Split(digits.train.x, torch.arange(len(digits.train)))
    gen = torch.Generator().manual_seed(0)
    x, idx = next(iterate_batches(tagged, bundle, 32, train=True, generator=gen))
    assert torch.equal(x, tagged.x[idx].float())
    x16, _ = next(iterate_batches(digits.val, digits, 32, train=False, image_size=16,
                                  dtype=torch.float64))
    assert x16.shape == (32, 1, 16, 16) and x16.dtype == torch.float64


def test_batch_size_errors(digits: DatasetBundle) -> None:
    # Raised at the call, not at the first next().
    with pytest.raises(DatasetError, match="batch_size=0"):
        iterate_batches(digits.val, digits, 0, train=False)
    with pytest.raises(DatasetError, match="batch_size=100000"):
        iterate_batches(digits.val, digits, 100_000, train=True)
    with pytest.raises(DatasetError, match="'blur'"):
        iterate_batches(digits.val, replace(digits, augment="blur"), 8, train=True)


def test_bundle_to_moves_every_tensor(digits: DatasetBundle) -> None:
    moved = digits.to("meta")
    for split in (moved.train, moved.val, moved.test):
        assert split.x.is_meta and split.y.is_meta
    assert digits.train.x.device.type == "cpu"  # original untouched


# ----------------------------------------------------------------------------- shared files


def test_fashion_mnist_from_shared_npz() -> None:
    path = _shared_file("fashion_mnist.npz")
    bundle = load_dataset("fashion-mnist", path.parent, val_fraction=0.1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.train.x.shape[1:] == (1, 28, 28) and bundle.augment == "crop_flip"
    assert torch.bincount(bundle.val.y).tolist() == [600] * 10
    assert bundle.mean == (0.2860,) and bundle.std == (0.3530,)


def test_cifar10_jpeg_from_shared_npz(cifar_jpeg: DatasetBundle) -> None:
    b = cifar_jpeg
    assert (len(b.train), len(b.val), len(b.test)) == (45000, 5000, 10000)
    assert b.train.x.shape[1:] == (3, 32, 32) and b.num_classes == 10
    full = torch.cat([b.train.x, b.val.x])
    means = full.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=0.01)
    assert torch.bincount(b.val.y).tolist() == [500] * 10


def test_cifar10_jpeg_second_load_uses_cache(
    cifar_jpeg: DatasetBundle, jpeg_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(list(jpeg_cache.glob("cifar10_jpeg_*.npy"))) == 1
    assert not list(jpeg_cache.glob("*.tmp"))
    def no_decode(*_args, **_kwargs):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(ds, "decode_jpegs", no_decode)
    start = time.perf_counter()
    again = load_dataset("cifar10-jpeg", _shared_file("cifar10_jpeg.npz"))
    assert time.perf_counter() - start < 5  # spec: < 2 s; slack for loaded CI machines
    assert torch.equal(again.test.x, cifar_jpeg.test.x)


# ----------------------------------------------------------------------------- errors


def test_unknown_name() -> None:
    with pytest.raises(DatasetError, match="'mnist'.*digits") as info:
        load_dataset("mnist")
    assert "\n" not in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DatasetError, match="nowhere.npz"):
        load_dataset("fashion-mnist", missing)
    with pytest.raises(DatasetError, match="cifar10_jpeg.npz"):
        load_dataset("cifar10-jpeg", tmp_path)  # a directory without the file
    with pytest.raises(DatasetError, match="data_path"):
        load_dataset("fashion-mnist")


def test_bad_npz_keys(tmp_path: Path) -> None:
    path = tmp_path / "fashion_mnist.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="x_test") as info:
        load_dataset("fashion-mnist", tmp_path)
    assert "y_test" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(DatasetError, match=f"val_fraction={fraction}"):
        load_dataset("digits", val_fraction=fraction)


def test_image_size_mismatch() -> None:
    with pytest.raises(DatasetError, match="image_size=16"):
        load_dataset("digits", image_size=16)
    assert load_dataset("digits", image_size=8).image_size == 8


# ----------------------------------------------------------------------------- image folder


def _write_folder(root: Path, split: str, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "eel")):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20 + c, 30, 3), dtype=np.uint8)  # non-square
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path, "train", 10)
    _write_folder(tmp_path, "val", 2)
    bundle = load_dataset("image-folder", tmp_path, val_fraction=0.2, image_size=16)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 6)
    assert torch.bincount(bundle.val.y).tolist() == [2, 2, 2]
    assert bundle.train.x.shape[1:] == (3, 16, 16) and bundle.train.x.dtype == torch.uint8
    assert all(0.3 < m < 0.7 for m in bundle.mean)  # computed from uniform-noise train images
    x, _ = next(iterate_batches(bundle.train, bundle, 8, train=True,
                                generator=torch.Generator().manual_seed(0)))
    assert x.shape == (8, 3, 16, 16)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train/"):
        load_dataset("image-folder", tmp_path)
    _write_folder(tmp_path, "train", 2)
    (tmp_path / "test" / "yak").mkdir(parents=True)
    with pytest.raises(DatasetError, match="yak"):
        load_dataset("image-folder", tmp_path)


# ----------------------------------------------------------------------------- torchvision


class _FakeCIFAR10:
    """Stand-in for torchvision's CIFAR10: files 'present' only when ``present`` is set."""

    present = True

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        if not self.present:
            if download:
                raise OSError("no network")
            raise RuntimeError("Dataset not found or corrupted.")
        n = 100 if train else 20
        self.data = np.full((n, 32, 32, 3), 7, np.uint8)
        self.targets = [i % 10 for i in range(n)]


def test_cifar10_via_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    bundle = load_dataset("cifar10", tmp_path)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (90, 10, 20)
    assert bundle.train.x.shape[1:] == (3, 32, 32) and bundle.mean[0] == 0.4914

    monkeypatch.setattr(_FakeCIFAR10, "present", False)
    with pytest.raises(DatasetError, match="--data-dir") as info:
        load_dataset("cifar10", tmp_path / "root")
    assert str(tmp_path / "root") in str(info.value)
