"""Datasets as whole tensors on the trial's device, and the batchers that slice them.

A training loop never touches a Python object per sample: a split is one float tensor in
[0, 1] of shape (N, C*H*W), and a batch is an index tensor into it. Besides the built-in
datasets, `npz:PATH` and `folder:PATH` name the user's own files (trainables.own_data).
dSprites and npz files may carry each image's ground-truth factors (trainables.factors).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.config import check_dataset_name, check_image_options
from trainables.errors import ConfigError, DataError
from trainables.factors import Factors
from trainables.own_data import (
    OwnData,
    is_dsprites_npz,
    load_folder,
    load_npz,
    read_cache,
    write_cache,
)
from trainables.shapes import (
    FACTOR_NAMES,
    FILE_PATTERN,
    OFFICIAL_FILE,
    SHAPE_NAMES,
    SPLIT_SEED,
    TEST_FRACTION,
    dsprites_fix,
    read_dsprites,
)

DATA_DIR_ENV = "LATENT_STUDIES_DATA_DIR"
CACHE_ENV = "LATENT_STUDIES_CACHE"
# Debian's dataset-fashion-mnist package puts the idx files here.
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# Where torchvision's MNIST/FashionMNIST put their raw files under a root.
TORCHVISION_SUBDIRS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SOURCE = "sklearn.datasets.load_digits"


@dataclass(frozen=True)
class Dataset:
    """Both splits of one dataset, flattened, as tensors on one device.

    An image is flattened channel-first, so `x.view(N, *image_shape)` recovers the
    (N, C, H, W) images.
    """

    name: str
    x_train: torch.Tensor  # (N, C*H*W) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64 in 0..n_classes-1
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int, int]  # (C, H, W), C = 1 (grey) or 3 (RGB)
    n_classes: int
    # Where the data came from (a directory or file, or "sklearn.datasets.load_digits") and
    # a hash of its arrays as loaded: what a trial's MLflow dataset input records, so runs
    # that trained on different files (another node's copy) tell apart.
    source: str = ""
    digest: str = ""
    # A folder's class names, by label; empty where classes are only numbers.
    class_names: tuple[str, ...] = ()
    # Sentences telling the user what the loader chose for them (a train/test split).
    notes: tuple[str, ...] = ()
    # Each image's ground-truth factors (dSprites' shape, scale, ...), where known.
    factors_train: Factors | None = None
    factors_test: Factors | None = None

    @property
    def has_factors(self) -> bool:
        return self.factors_train is not None

    @property
    def n_pixels(self) -> int:
        return self.x_train.shape[1]

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def smallest_class(self) -> tuple[int, int]:
        """The class with the fewest training samples (the first on a tie) and its count:
        what bounds ML-VAE's group_size."""
        counts = torch.bincount(self.y_train.cpu(), minlength=self.n_classes)
        index = int(torch.argmin(counts))
        return index, int(counts[index])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: str | torch.device) -> Dataset:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        factors = lambda f: None if f is None else f.to(device)  # noqa: E731
        return dataclasses.replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
            factors_train=factors(self.factors_train),
            factors_test=factors(self.factors_test),
        )


def digest(arrays: dict[str, np.ndarray]) -> str:
    """The first 16 hex digits of the SHA-256 of the arrays, in key order (MLflow keeps at
    most 36 characters of a dataset's digest)."""
    hashed = hashlib.sha256()
    for key in sorted(arrays):
        hashed.update(key.encode())
        hashed.update(np.ascontiguousarray(arrays[key]).tobytes())
    return hashed.hexdigest()[:16]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    color: str | None = None,
) -> Dataset:
    """Load `name` whole onto `device`. MNIST-style sets come from idx files in `data_dir`
    (or $LATENT_STUDIES_DATA_DIR); torchvision downloads only when `download` is true.
    `npz:PATH` and `folder:PATH` read the user's files; a folder's images are resized to
    `image_size` square and converted to `color` ("gray" or "rgb") when those are given.
    dSprites is read from its file in `data_dir` (never downloaded), or from an npz: file
    in its format."""
    try:
        checked = check_dataset_name(name)
        check_image_options(checked, image_size, color)
    except ConfigError as error:  # the CLI checked these; a caller that did not gets this
        raise DataError(str(error)) from None
    kind, _, path = checked.partition(":")
    if kind == "npz":
        if is_dsprites_npz(Path(path)):
            return _dsprites(checked, Path(path), "dataset").to(device)
        return _own_dataset(checked, path, load_npz(Path(path))).to(device)
    if kind == "folder":
        loaded = load_folder(Path(path), image_size, color, cache_root())
        return _own_dataset(checked, path, loaded).to(device)
    if name == "digits":
        return _load_digits().to(device)
    if name == "dsprites":
        return _dsprites(name, _find_dsprites(data_dir), "data-dir").to(device)
    directory = _find_idx_dir(name, data_dir, download)
    arrays = {key: _read_idx(directory / file) for key, file in IDX_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"data-dir: {directory} has {len(arrays[f'x_{split}'])} {split} images but "
                f"{len(arrays[f'y_{split}'])} labels; replace the idx files with matching ones"
            )
    height, width = arrays["x_train"].shape[1:]
    images = lambda a: torch.from_numpy(a.reshape(len(a), -1)).float().div_(255.0)  # noqa: E731
    labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    dataset = Dataset(
        name,
        images(arrays["x_train"]),
        labels(arrays["y_train"]),
        images(arrays["x_test"]),
        labels(arrays["y_test"]),
        (1, height, width),
        10,
        source=str(directory.resolve()),
        digest=digest(arrays),
    )
    return dataset.to(device)


def _load_digits() -> Dataset:
    """scikit-learn's digits, split once with scikit-learn and then read from a cache file:
    importing scikit-learn takes 1.6 s, which every fresh process (each Ray worker's first
    trial, each `study train`) paid before it could train."""
    path = (
        cache_root() / f"digits-{_sklearn_version()}-{DIGITS_TEST_FRACTION}-{DIGITS_SPLIT_SEED}.npz"
    )
    arrays = read_cache(path, ("x_train", "y_train", "x_test", "y_test"))
    if arrays is None:  # absent or damaged
        arrays = _split_digits()
        write_cache(path, arrays)
    t = torch.from_numpy
    return Dataset(
        "digits",
        t(arrays["x_train"]),
        t(arrays["y_train"]),
        t(arrays["x_test"]),
        t(arrays["y_test"]),
        (1, 8, 8),
        10,
        source=DIGITS_SOURCE,
        digest=digest(arrays),
    )


def _own_dataset(name: str, source: str, loaded: OwnData) -> Dataset:
    """A Dataset of arrays read from the user's files: images (N, C, H, W), uint8 or
    float32 in [0, 1]."""
    arrays = loaded.arrays

    def images(a: np.ndarray) -> torch.Tensor:
        flat = torch.from_numpy(a.reshape(len(a), -1))
        return flat.float().div_(255.0) if a.dtype == np.uint8 else flat.float()

    def factors(split: str) -> Factors | None:
        if not loaded.has_factors:
            return None
        values = torch.from_numpy(arrays[f"factors_{split}"])
        return Factors(loaded.factor_names, loaded.factor_sizes, values)

    return Dataset(
        name,
        images(arrays["x_train"]),
        torch.from_numpy(arrays["y_train"]),
        images(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]),
        tuple(arrays["x_train"].shape[1:]),
        loaded.n_classes,
        source=source,
        digest=digest(arrays),
        class_names=loaded.class_names,
        notes=loaded.notes,
        factors_train=factors("train"),
        factors_test=factors("test"),
    )


def _dsprites(name: str, path: Path, field: str) -> Dataset:
    """A dSprites file (see trainables.shapes.read_dsprites, which says what memory it
    takes: 12 GB for the official file): labelled by the shape factor, with every factor."""
    splits = read_dsprites(path, field)
    n_shapes = splits.sizes[FACTOR_NAMES.index("shape")]
    factors = {
        split: Factors(FACTOR_NAMES, splits.sizes, torch.from_numpy(values))
        for split, values in (("train", splits.factors_train), ("test", splits.factors_test))
    }
    shape = lambda f: f.values[:, FACTOR_NAMES.index("shape")].clone()  # noqa: E731
    size = splits.image_size
    note = (
        f"{name} has no train/test split; split {round(100 * (1 - TEST_FRACTION))}/"
        f"{round(100 * TEST_FRACTION)} at random with seed {SPLIT_SEED}"
    )
    return Dataset(
        name,
        torch.from_numpy(splits.x_train),
        shape(factors["train"]),
        torch.from_numpy(splits.x_test),
        shape(factors["test"]),
        (1, size, size),
        n_shapes,
        source=str(path.resolve()),
        digest=splits.digest,
        class_names=SHAPE_NAMES[:n_shapes],
        notes=(note,),
        factors_train=factors["train"],
        factors_test=factors["test"],
    )


def _find_dsprites(data_dir) -> Path:
    """The official file in the data directory (or its dsprites/), else the one rendered
    dSprites file there."""
    given = data_dir or os.environ.get(DATA_DIR_ENV)
    if not given:
        raise DataError(
            f"data-dir: dsprites is read from a directory and none is given (no --data-dir, "
            f"${DATA_DIR_ENV} unset); {dsprites_fix('DIR')}, then pass --data-dir DIR"
        )
    root = Path(given).expanduser()
    for directory in (root, root / "dsprites"):
        if (directory / OFFICIAL_FILE).is_file():
            return directory / OFFICIAL_FILE
        found = sorted(p for p in directory.glob(FILE_PATTERN) if p.is_file())
        if len(found) == 1:
            return found[0]
        if found:
            raise DataError(
                f"data-dir: {directory} holds {len(found)} rendered dSprites files "
                f"({', '.join(p.name for p in found)}) and not {OFFICIAL_FILE}; fix: keep "
                "one of them there, or name one with --dataset npz:PATH"
            )
    raise DataError(
        f"data-dir: no dSprites file in {root} (expected {OFFICIAL_FILE}, or one "
        f"{FILE_PATTERN}); {dsprites_fix(str(root))}"
    )


def _split_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _sklearn_version() -> str:
    # Read from the installed package's metadata: importing it is what the cache avoids.
    return importlib.metadata.version("scikit-learn")


def cache_root() -> Path:
    """Where computed files (the digits split, reference classifiers) are kept."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latent-studies"
    return Path(os.environ.get(CACHE_ENV, default))


def _find_idx_dir(name: str, data_dir, download: bool) -> Path:
    given = data_dir or os.environ.get(DATA_DIR_ENV)
    if download:
        return _download(name, Path(given) if given else default_download_dir())
    candidates: list[Path] = []
    if given:
        root = Path(given).expanduser()
        candidates += [root, root / name, root / TORCHVISION_SUBDIRS[name]]
    elif name in SYSTEM_DIRS:
        candidates.append(SYSTEM_DIRS[name])
    for directory in candidates:
        if all((directory / f).exists() for f in IDX_FILES.values()):
            return directory
    where = f"in {given}" if given else "(no --data-dir given and $" + DATA_DIR_ENV + " is unset)"
    raise DataError(
        f"data-dir: {name} idx files not found {where}; expected "
        f"{', '.join(IDX_FILES.values())}; fix: pass --data-dir DIR (or set ${DATA_DIR_ENV}) "
        f"to a directory holding them, or pass --download to fetch them with torchvision"
    )


def default_download_dir() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latent-studies" / "data"
    )


def _download(name: str, root: Path) -> Path:
    """Fetch with torchvision (which checks md5 sums), then read its raw .gz files."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as error:  # network or checksum failures arrive as many types
        raise DataError(
            f"download: torchvision could not fetch {name} into {root} ({error}); "
            f"fix: download the idx files by hand and pass --data-dir"
        ) from None
    return root / TORCHVISION_SUBDIRS[name]


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (gzip or raw): a big-endian header, then uint8 values."""
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "fix: replace it with the original file, pass --data-dir DIR pointing at intact files, or pass --download"
    try:
        with opener(path, "rb") as handle:
            data = bytearray(
                handle.read()
            )  # writable, so torch can share it without a copy warning
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"data-dir: cannot read {path} ({error}); {fix}") from None
    if len(data) < 8:
        raise DataError(f"data-dir: {path} is truncated ({len(data)} bytes); {fix}")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataError(f"data-dir: {path} is not a uint8 idx file; {fix}")
    header = 4 + 4 * ndim
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"data-dir: {path} is truncated or padded ({len(data)} bytes, expected {expected}); {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Index tensors of a random permutation of range(n); the last, short batch is dropped
    unless it is the only one, so every step sees a full batch."""
    order = torch.randperm(n, generator=generator).to(device)
    stop = max(n - batch_size + 1, 1)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


class GroupBatcher:
    """Batches of `groups_per_batch` groups x `group_size` samples of one label (ML-VAE).

    A batch is laid out group-major, so `batch.view(groups, size)` recovers the groups.
    Groups are cut from per-class index tensors shuffled once per epoch.
    """

    def __init__(
        self, labels: torch.Tensor, n_classes: int, group_size: int, groups_per_batch: int
    ):
        self.class_indices = [torch.nonzero(labels == c).squeeze(1) for c in range(n_classes)]
        self.group_size = group_size
        self.groups_per_batch = groups_per_batch
        smallest = min(len(idx) for idx in self.class_indices)
        if smallest < group_size:
            raise DataError(
                f"group_size: {group_size} exceeds the smallest class ({smallest} samples); "
                f"choose group_size <= {smallest}"
            )

    def epoch(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        k = self.group_size
        groups = []
        for idx in self.class_indices:
            perm = torch.randperm(len(idx), generator=generator).to(idx.device)
            n_groups = len(idx) // k
            groups.append(idx[perm[: n_groups * k]].view(n_groups, k))
        all_groups = torch.cat(groups)
        all_groups = all_groups[torch.randperm(len(all_groups), generator=generator).to(idx.device)]
        g = min(self.groups_per_batch, len(all_groups))
        for start in range(0, len(all_groups) - g + 1, g):
            yield all_groups[start : start + g].reshape(-1)


def fixed_groups(labels: torch.Tensor, group_size: int, seed: int = 0) -> torch.Tensor:
    """A group id per sample: same-label samples cut into groups of `group_size` (the last
    group of a class may be smaller). Deterministic in `seed`; used to group held-out data."""
    generator = torch.Generator().manual_seed(seed)
    group_ids = torch.empty(len(labels), dtype=torch.long)
    labels_cpu = labels.cpu()
    next_id = 0
    for c in torch.unique(labels_cpu).tolist():
        idx = torch.nonzero(labels_cpu == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        ids = torch.arange(len(idx)) // group_size
        group_ids[idx] = ids + next_id
        next_id += int(ids.max()) + 1
    return group_ids.to(labels.device)
