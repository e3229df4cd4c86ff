"""Datasets as tensors, the batchers that slice them, and idx file reading."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import DATASETS, DataError, load_dataset
from trainables.data import (
    DIGITS_SOURCE,
    IDX_FILES,
    GroupBatcher,
    fixed_groups,
    shuffled_batches,
)

# --- digits -----------------------------------------------------------------------------


def test_digits_split_shapes_and_ranges(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 64)
    assert digits.x_test.shape == (360, 64)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.n_pixels == 64 and digits.image_shape == (1, 8, 8) and digits.n_classes == 10
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for x in (digits.x_train, digits.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0  # scaled by 16, not by something larger
    for y in (digits.y_train, digits.y_test):
        assert set(y.tolist()) == set(range(10))
    # Stratified: every class has 35 to 37 of its ~180 samples in the test split.
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_split_is_deterministic(digits):
    again = load_dataset("digits")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(digits, name), getattr(again, name)), name


def test_digits_come_from_the_cache_as_scikit_learn_splits_them(tmp_path, monkeypatch):
    """The split is made once with scikit-learn and cached; the cached copy, and a copy
    rebuilt over a damaged cache file, equal scikit-learn's split."""
    from trainables import data

    monkeypatch.setenv("LATENT_STUDIES_CACHE", str(tmp_path))
    fresh = data._split_digits()
    first = load_dataset("digits")  # splits and writes the cache
    (cached,) = tmp_path.glob("digits-*.npz")
    second = load_dataset("digits")  # reads it
    cached.write_bytes(b"not a zip file")
    rebuilt = load_dataset("digits")
    cached.write_bytes(cached.read_bytes()[:200])  # a truncated archive
    rebuilt_again = load_dataset("digits")
    for dataset in (first, second, rebuilt, rebuilt_again):
        for key, array in fresh.items():
            assert torch.equal(getattr(dataset, key), torch.from_numpy(array)), key


def test_digits_from_a_warm_cache_do_not_import_scikit_learn(digits):
    """Importing scikit-learn takes 1.6 s, which every Ray worker's first trial paid."""
    import subprocess
    import sys

    code = "import sys\nfrom trainables import load_dataset\nload_dataset('digits')\nprint('sklearn' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_digits_splits_are_disjoint(digits):
    # No test image appears in the training split (the dataset has no exact duplicates
    # across the split, so an overlap would mean the split leaks).
    train_rows = {tuple(row) for row in digits.x_train.numpy().round(4).tolist()}
    overlap = sum(tuple(row) in train_rows for row in digits.x_test.numpy().round(4).tolist())
    assert overlap <= 2


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DataError) as info:
        load_dataset("cifar")
    message = str(info.value)
    assert message.startswith("dataset:")
    assert "'cifar'" in message
    for name in DATASETS:
        assert name in message


# --- batchers ----------------------------------------------------------------------------


def test_shuffled_batches_cover_a_permutation_with_full_batches():
    generator = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(103, 10, generator, torch.device("cpu")))
    assert [len(b) for b in batches] == [10] * 10  # the short last batch is dropped
    seen = torch.cat(batches)
    assert len(torch.unique(seen)) == 100
    # Fewer samples than a batch: one batch of all of them.
    (only,) = shuffled_batches(7, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert sorted(only.tolist()) == list(range(7))


@pytest.mark.parametrize(("group_size", "groups_per_batch"), [(5, 4), (8, 8), (2, 1)])
def test_group_batcher_batches_are_group_major_same_label_groups(
    digits, group_size, groups_per_batch
):
    labels = digits.y_train
    batcher = GroupBatcher(labels, 10, group_size, groups_per_batch)
    batches = list(batcher.epoch(torch.Generator().manual_seed(0)))
    assert batches
    for batch in batches:
        assert batch.dtype == torch.int64
        assert len(batch) == groups_per_batch * group_size
        groups = labels[batch].view(groups_per_batch, group_size)
        assert (groups == groups[:, :1]).all(), "a group mixes labels"
    # Groups of different labels share batches (groups are shuffled across classes).
    assert any(len(torch.unique(labels[b])) > 1 for b in batches) or groups_per_batch == 1
    # One epoch never repeats a sample and covers all whole groups that fill whole batches.
    seen = torch.cat(batches)
    assert len(torch.unique(seen)) == len(seen)
    n_groups = sum(int((labels == c).sum()) // group_size for c in range(10))
    assert len(batches) == n_groups // groups_per_batch
    assert len(seen) == (n_groups // groups_per_batch) * groups_per_batch * group_size


def test_group_batcher_is_deterministic_in_its_generator(digits):
    batcher = GroupBatcher(digits.y_train, 10, 4, 8)
    first = list(batcher.epoch(torch.Generator().manual_seed(3)))
    again = list(batcher.epoch(torch.Generator().manual_seed(3)))
    other = list(batcher.epoch(torch.Generator().manual_seed(4)))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(other))


def test_group_batcher_rejects_groups_larger_than_a_class():
    labels = torch.tensor([0] * 10 + [1] * 3)
    with pytest.raises(DataError, match=r"^group_size: 4 exceeds the smallest class \(3 samples\)"):
        GroupBatcher(labels, 2, 4, 2)


def test_fixed_groups_same_label_bounded_size_deterministic(digits):
    labels = digits.y_test
    k = 8
    ids = fixed_groups(labels, k, seed=0)
    assert ids.shape == labels.shape
    assert torch.equal(ids, fixed_groups(labels, k, seed=0))
    assert not torch.equal(ids, fixed_groups(labels, k, seed=1))
    # Ids are 0..n_groups-1 with none skipped.
    assert torch.equal(torch.unique(ids), torch.arange(int(ids.max()) + 1))
    sizes = torch.bincount(ids)
    assert sizes.max() <= k and sizes.min() >= 1
    for g in range(len(sizes)):
        assert len(torch.unique(labels[ids == g])) == 1, f"group {g} mixes labels"
    # Per class, every group but at most one is full.
    for c in range(10):
        class_sizes = torch.bincount(ids[labels == c])
        class_sizes = class_sizes[class_sizes > 0]
        assert int((class_sizes < k).sum()) <= 1
        assert int(class_sizes.sum()) == int((labels == c).sum())


# --- idx files -----------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: two zero bytes, dtype 0x08 (uint8), ndim, big-endian sizes, values."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    return header + array.tobytes()


def write_idx_set(directory: Path, n_train: int = 12, n_test: int = 5, shape=(4, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(arrays[key])))
    return arrays


def test_idx_header_magic_numbers():
    # The helper must write the real format: 0x00000803 for images, 0x00000801 for labels.
    assert idx_bytes(np.zeros((2, 4, 3)))[:4] == bytes.fromhex("00000803")
    assert idx_bytes(np.zeros(2))[:4] == bytes.fromhex("00000801")


def test_load_mnist_from_idx_files(tmp_path):
    arrays = write_idx_set(tmp_path)
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.name == "mnist"
    assert dataset.image_shape == (1, 4, 3) and dataset.n_pixels == 12 and dataset.n_classes == 10
    assert dataset.x_train.shape == (12, 12) and dataset.x_test.shape == (5, 12)
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["x_train"].reshape(12, -1).astype(np.float32) / 255.0)
    torch.testing.assert_close(dataset.x_train, expected)
    assert dataset.y_train.tolist() == arrays["y_train"].tolist()
    assert dataset.y_test.tolist() == arrays["y_test"].tolist()


def test_a_dataset_records_where_it_came_from_and_a_hash_of_its_arrays(tmp_path, digits):
    """What a trial's MLflow dataset input says: the same files hash the same wherever
    they lie, and one changed pixel changes the hash."""
    write_idx_set(tmp_path / "a")
    first = load_dataset("mnist", data_dir=tmp_path / "a")
    write_idx_set(tmp_path / "b")
    copy = load_dataset("mnist", data_dir=tmp_path / "b")
    assert first.source == str((tmp_path / "a").resolve()) and copy.source.endswith("b")
    assert len(first.digest) == 16 and first.digest == copy.digest
    changed = write_idx_set(tmp_path / "c")
    changed["x_train"][0, 0, 0] ^= 1
    for key, name in IDX_FILES.items():
        (tmp_path / "c" / name).write_bytes(gzip.compress(idx_bytes(changed[key])))
    assert load_dataset("mnist", data_dir=tmp_path / "c").digest != first.digest
    assert first.to("cpu").digest == first.digest
    assert digits.source == DIGITS_SOURCE and digits.digest == load_dataset("digits").digest
    assert digits.digest != first.digest


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw"])
def test_load_mnist_finds_files_below_the_data_dir(tmp_path, layout):
    arrays = write_idx_set(tmp_path / layout)
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.y_test.tolist() == arrays["y_test"].tolist()


def assert_one_line_with_fixes(error: DataError, *names: str):
    message = str(error)
    assert "\n" not in message
    assert message.startswith("data-dir:")
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert "--data-dir" in message and "--download" in message, message


def test_missing_directory_names_it_and_both_fixes(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=missing)
    assert_one_line_with_fixes(info.value, str(missing), "train-images-idx3-ubyte.gz")


def test_empty_directory_names_it_and_both_fixes(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert_one_line_with_fixes(info.value, str(tmp_path), "fashion-mnist")


def test_truncated_idx_payload_names_the_file(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / IDX_FILES["x_test"]
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-7]))  # a valid gzip stream, short of pixels
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_with_fixes(info.value, str(path), "truncated")


def test_truncated_gzip_stream_names_the_file(tmp_path):
    write_idx_set(tmp_path, n_train=200)
    path = tmp_path / IDX_FILES["x_train"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut mid-stream, as an interrupted download
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_with_fixes(info.value, str(path))


def test_wrong_magic_names_the_file(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / IDX_FILES["y_train"]
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[2] = 0x0D  # float32 instead of uint8
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert_one_line_with_fixes(info.value, str(path), "not a uint8 idx file")


def test_mismatched_image_and_label_counts(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / IDX_FILES["y_train"]).write_bytes(gzip.compress(idx_bytes(np.zeros(11))))
    with pytest.raises(DataError, match=r"12 train images but 11 labels"):
        load_dataset("mnist", data_dir=tmp_path)


# Label counts as recorded in the data's PROVENANCE.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist(mnist_dir):
    mnist = load_dataset("mnist", data_dir=mnist_dir)
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.image_shape == (1, 28, 28)
    assert mnist.x_train.min() >= 0.0 and mnist.x_train.max() == 1.0
    assert torch.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
