"""Datasets from the user's own files: an .npz archive of four arrays (`npz:PATH`), with
each image's ground-truth factors if it has them, or a folder with one subfolder of images
per class (`folder:PATH`).

Both come back as numpy arrays with images channel-first, (N, C, H, W), and labels int64.
Whatever is wrong with the files is a one-line DataError that starts `dataset: `, names
the file and says how to fix it: the user can repair their own data, not our code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import DataError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# An npz file may also hold each image's factors (both splits or neither), and their names.
FACTOR_ARRAYS = ("factors_train", "factors_test")
FACTOR_NAMES_ARRAY = "factor_names"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHANNELS = (1, 3)
# A folder without train/ and test/ is split per class with these, and every split's
# samples are put in a seeded order (see _shuffled).
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
# Part of a folder's cache key: change it when what a cache file holds changes, so files
# written by an older version are not read as current.
FOLDER_CACHE_VERSION = 1
# Pillow's mode names for images of one channel (grey, 1-bit, 16-bit, with alpha).
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
NPZ_FIX = "write it with numpy.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)"


@dataclass(frozen=True)
class OwnData:
    """Arrays read from the user's files: x_* (N, C, H, W) uint8 or float32 in [0, 1],
    y_* (N,) int64 in 0..n_classes-1, every class present in y_train."""

    arrays: dict[str, np.ndarray]
    n_classes: int
    class_names: tuple[str, ...] = ()
    # Sentences the tool tells the user about choices it made for them (a split).
    notes: tuple[str, ...] = ()
    # With factors: arrays also holds factors_train and factors_test (N, K) int64.
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()

    @property
    def has_factors(self) -> bool:
        return "factors_train" in self.arrays


def one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- npz ---------------------------------------------------------------------------------


def load_npz(path: Path) -> OwnData:
    arrays = _read_npz(path)
    images = {key: _npz_images(path, key, arrays[key]) for key in ("x_train", "x_test")}
    if images["x_train"].shape[1:] != images["x_test"].shape[1:]:
        raise DataError(
            f"dataset: {path}: x_train images have (H, W, C) = {_hwc(images['x_train'])} but "
            f"x_test images {_hwc(images['x_test'])}; fix: store both splits at one size and "
            "channel count"
        )
    labels = {key: _npz_labels(path, key, arrays[key]) for key in ("y_train", "y_test")}
    for split in ("train", "test"):
        n_images, n_labels = len(images[f"x_{split}"]), len(labels[f"y_{split}"])
        if n_images != n_labels:
            raise DataError(
                f"dataset: {path}: x_{split} has {n_images} images but y_{split} has "
                f"{n_labels} labels; fix: store one label per image"
            )
    n_classes = _check_classes(path, labels["y_train"], labels["y_test"])
    if not any(key in arrays for key in (*FACTOR_ARRAYS, FACTOR_NAMES_ARRAY)):
        return OwnData({**images, **labels}, n_classes)
    factors, names, sizes = _npz_factors(path, arrays, images)
    return OwnData({**images, **labels, **factors}, n_classes, (), (), names, sizes)


def _npz_factors(
    path: Path, arrays: dict[str, np.ndarray], images: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], tuple[str, ...], tuple[int, ...]]:
    """factors_train and factors_test as int64, with the factors' names and sizes."""
    from trainables.factors import check_factor_values

    absent = [key for key in FACTOR_ARRAYS if key not in arrays]
    if absent:
        have = [key for key in (*FACTOR_ARRAYS, FACTOR_NAMES_ARRAY) if key in arrays]
        raise DataError(
            f"dataset: {path} has {' and '.join(have)} but no {absent[0]}; fix: store both "
            "factors_train and factors_test (one row of factor values per image of each "
            "split), or neither"
        )
    factors = {key: arrays[key] for key in FACTOR_ARRAYS}
    names, sizes = check_factor_values(factors, arrays.get(FACTOR_NAMES_ARRAY), str(path))
    for key, split in zip(FACTOR_ARRAYS, ("x_train", "x_test"), strict=True):
        n_rows, n_images = len(factors[key]), len(images[split])
        if n_rows != n_images:
            raise DataError(
                f"dataset: {path}: {key} has {n_rows} rows but {split} has {n_images} "
                "images; fix: store one row of factor values per image"
            )
    return {key: v.astype(np.int64) for key, v in factors.items()}, names, sizes


def is_dsprites_npz(path: Path) -> bool:
    """Whether `path` is an archive in dSprites' format (imgs, latents_classes) rather than
    the four arrays of an npz: dataset (see trainables.shapes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return {"imgs.npy", "latents_classes.npy"} <= members and "x_train.npy" not in members


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(
            f"dataset: {path} does not exist; fix: check the path after npz: (an .npz file "
            "with arrays x_train, y_train, x_test, y_test)"
        )
    if path.is_dir():
        raise DataError(
            f"dataset: {path} is a folder, not an .npz file; fix: write folder:{path} for a "
            "folder with one subfolder of images per class, or npz:PATH for an .npz file"
        )
    cannot = f"dataset: cannot read {path} as an .npz archive"
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
        # Told apart before numpy reads it: on anything else numpy tries to unpickle and
        # answers with advice about allow_pickle.
        if head == b"\x93NUMPY":
            raise DataError(f"{cannot} (it is an .npy file of one array, not four); fix: {NPZ_FIX}")
        if not head.startswith(b"PK"):
            what = "it is empty" if not head else "it is not a zip archive, which an .npz is"
            raise DataError(f"{cannot} ({what}); fix: {NPZ_FIX}")
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{cannot} ({one_line(error)}); fix: {NPZ_FIX}") from None
    with archive:
        missing = [key for key in ARRAYS if key not in archive.files]
        if missing:
            has = ", ".join(archive.files) or "no arrays"
            raise DataError(
                f"dataset: {path} has no array {missing[0]!r} (it has {has}); fix: store the "
                f"four arrays x_train, y_train, x_test, y_test, e.g. {NPZ_FIX}"
            )
        optional = [k for k in (*FACTOR_ARRAYS, FACTOR_NAMES_ARRAY) if k in archive.files]
        try:
            return {key: archive[key] for key in (*ARRAYS, *optional)}
        # ValueError: a pickled (object) array; the others: a damaged member.
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise DataError(f"{cannot} ({one_line(error)}); fix: {NPZ_FIX}") from None


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """`x` checked and made channel-first (N, C, H, W): uint8 as stored, floats as float32."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in CHANNELS:
        if x.ndim == 4:
            problem = f"{key} has {x.shape[-1]} channels (shape {tuple(x.shape)})"
        else:
            problem = f"{key} has shape {tuple(x.shape)}"
        raise DataError(
            f"dataset: {path}: {problem}; fix: store images as (N, H, W), or (N, H, W, C) "
            "with the channels last and C = 1 (grey) or 3 (RGB)"
        )
    if len(x) == 0 or 0 in x.shape[1:3]:
        raise DataError(
            f"dataset: {path}: {key} holds no images (shape {tuple(x.shape)}); fix: store some"
        )
    range_fix = "fix: scale pixels to [0, 1] (float) or store them as uint8 (0..255)"
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind == "f":
        _check_float_pixels(path, key, x, range_fix)
        x = x.astype(np.float32, copy=False)
    else:
        raise DataError(f"dataset: {path}: {key} holds {x.dtype} pixels; {range_fix}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _check_float_pixels(path: Path, key: str, x: np.ndarray, range_fix: str) -> None:
    n_nan = int(np.isnan(x).sum())
    n_inf = int(np.isinf(x).sum())
    if n_nan or n_inf:
        raise DataError(
            f"dataset: {path}: {key} has {n_nan} NaN and {n_inf} infinite pixel values; "
            "fix: replace them with values in [0, 1]"
        )
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"dataset: {path}: {key} pixel values span [{low:g}, {high:g}], outside [0, 1]; "
            f"{range_fix}"
        )


def _npz_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(
            f"dataset: {path}: {key} has shape {tuple(y.shape)}; fix: store one integer class "
            "per image, a 1-D array (for one-hot labels, y.argmax(axis=1))"
        )
    if y.dtype.kind not in "iu":
        raise DataError(
            f"dataset: {path}: {key} holds {y.dtype} labels; fix: store integer class indices "
            "0..K-1, e.g. y.astype(numpy.int64)"
        )
    if len(y) and y.min() < 0:
        raise DataError(
            f"dataset: {path}: {key} has {int((y < 0).sum())} negative labels (the smallest "
            f"is {int(y.min())}); fix: number the classes 0..K-1"
        )
    return y.astype(np.int64)


def _check_classes(path: Path, y_train: np.ndarray, y_test: np.ndarray) -> int:
    """K = the largest label + 1; every class 0..K-1 must have training samples."""
    n_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    # Found from the sorted distinct labels, not a bincount: a stray huge label must not
    # allocate an array of its size.
    present = np.unique(y_train)
    if len(present) < n_classes:
        gaps = np.nonzero(present != np.arange(len(present)))[0]
        first = int(gaps[0]) if len(gaps) else len(present)
        more = n_classes - len(present) - 1
        also = f" (and {more} more)" if more else ""
        raise DataError(
            f"dataset: {path}: class {first}{also} has no training samples in y_train (labels "
            f"run 0..{n_classes - 1}); fix: number the classes 0..K-1 with no gaps and put "
            "samples of every class in the training split"
        )
    return n_classes


def _hwc(x: np.ndarray) -> tuple[int, int, int]:
    channels, height, width = x.shape[1:]
    return (height, width, channels)


# --- folders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderFiles:
    """A folder's images as (file, label) pairs per split, in the order they are loaded."""

    splits: dict[str, list[tuple[Path, int]]]
    class_names: tuple[str, ...]
    notes: tuple[str, ...]


def load_folder(path: Path, image_size: int | None, color: str | None, cache_dir: Path) -> OwnData:
    """The folder's images decoded, from a cache file when the same files (by path, size
    and modification time) were decoded before with the same options: decoding thousands
    of images took longer than a short trial."""
    files = folder_files(path)
    cache = cache_dir / f"folder-{_folder_key(path, files, image_size, color)}.npz"
    arrays = read_cache(cache, ARRAYS)
    if arrays is None:
        arrays = _decode_folder(files, image_size, color)
        write_cache(cache, arrays)
    return OwnData(arrays, len(files.class_names), files.class_names, files.notes)


def folder_files(path: Path) -> FolderFiles:
    if not path.exists():
        raise DataError(
            f"dataset: {path} does not exist; fix: check the path after folder: (a folder with "
            "one subfolder of images per class)"
        )
    if not path.is_dir():
        raise DataError(
            f"dataset: {path} is a file, not a folder; fix: write npz:{path} for an .npz file, "
            "or folder:PATH for a folder with one subfolder of images per class"
        )
    train, test = path / "train", path / "test"
    if train.is_dir() and test.is_dir():
        by_split = {"train": _class_files(train), "test": _class_files(test)}
        if list(by_split["train"]) != list(by_split["test"]):
            raise DataError(
                f"dataset: {path}: train/ has classes {', '.join(by_split['train'])} but test/ "
                f"has {', '.join(by_split['test'])}; fix: give train/ and test/ the same class "
                "subfolders"
            )
        class_names = tuple(by_split["train"])
        splits = {
            split: [(f, label) for label, fs in enumerate(classes.values()) for f in fs]
            for split, classes in by_split.items()
        }
        return FolderFiles(_shuffled(splits), class_names, ())
    if train.is_dir() or test.is_dir():
        have, lack = ("train", "test") if train.is_dir() else ("test", "train")
        raise DataError(
            f"dataset: {path} has {have}/ but no {lack}/; fix: add {lack}/<class>/ folders, or "
            f"move the class folders up into {path} to have them split "
            f"{_percent(1 - FOLDER_TEST_FRACTION)}/{_percent(FOLDER_TEST_FRACTION)}"
        )
    classes = _class_files(path)
    splits = _split(path, classes)
    note = (
        f"folder:{path} has no train/ and test/; split "
        f"{_percent(1 - FOLDER_TEST_FRACTION)}/{_percent(FOLDER_TEST_FRACTION)} per class "
        f"with seed {FOLDER_SPLIT_SEED} (put images in train/ and test/ to choose the split)"
    )
    return FolderFiles(_shuffled(splits), tuple(classes), (note,))


def _percent(fraction: float) -> str:
    return str(round(100 * fraction))


def _class_files(directory: Path) -> dict[str, list[Path]]:
    """Sorted class name -> its sorted image files. Hidden entries are skipped: macOS
    leaves `._name.png` files beside copied images that are not images at all."""
    suffixes = "/".join(IMAGE_SUFFIXES)
    first, *others = IMAGE_SUFFIXES
    try:
        subfolders = sorted(
            d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not subfolders:
            raise DataError(
                f"dataset: {directory} has no class subfolders; fix: put the images in one "
                f"subfolder per class, {directory}/<class>/*{first} (or {', '.join(others)})"
            )
        classes = {
            d.name: sorted(
                f
                for f in d.iterdir()
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
            )
            for d in subfolders
        }
    except OSError as error:
        raise DataError(
            f"dataset: cannot list {directory} ({one_line(error)}); fix: make it readable"
        ) from None
    for name, files in classes.items():
        if not files:
            raise DataError(
                f"dataset: {directory / name} holds no {suffixes} images; fix: add images to "
                "it or remove the folder"
            )
    return classes


def _split(directory: Path, classes: dict[str, list[Path]]) -> dict[str, list[tuple[Path, int]]]:
    """A seeded, stratified split: FOLDER_TEST_FRACTION of each class, rounded, goes to
    the test split; at least one image of a class of two or more (so every class is
    tested), and never its last (so every class is trained on)."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for label, files in enumerate(classes.values()):
        order = rng.permutation(len(files))
        n_test = min(len(files) - 1, max(1, round(len(files) * FOLDER_TEST_FRACTION)))
        splits["test"] += [(files[i], label) for i in order[:n_test]]
        splits["train"] += [(files[i], label) for i in order[n_test:]]
    if not splits["test"]:
        raise DataError(
            f"dataset: {directory} has one image per class, none left to test on; fix: add "
            "images, or put them in train/<class>/ and test/<class>/ yourself"
        )
    return splits


def _shuffled(splits: dict[str, list[tuple[Path, int]]]) -> dict[str, list[tuple[Path, int]]]:
    """Each split in a seeded order rather than class by class: the first test images are
    what the reconstruction grid and the latent scatter show, and in class order they
    would all be one class."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    return {
        split: [items[i] for i in rng.permutation(len(items))] for split, items in splits.items()
    }


def _folder_key(path: Path, files: FolderFiles, image_size: int | None, color: str | None) -> str:
    hashed = hashlib.sha256()
    hashed.update(repr((FOLDER_CACHE_VERSION, image_size, color)).encode())
    for split, items in files.splits.items():
        for file, label in items:
            try:
                stat = file.stat()
            except OSError as error:
                raise DataError(
                    f"dataset: cannot read image {file} ({one_line(error)}); fix: replace or "
                    "delete the file"
                ) from None
            entry = (split, str(file.relative_to(path)), label, stat.st_size, stat.st_mtime_ns)
            hashed.update(repr(entry).encode())
    return hashed.hexdigest()[:24]


def _decode_folder(
    files: FolderFiles, image_size: int | None, color: str | None
) -> dict[str, np.ndarray]:
    first: tuple[Path, tuple[int, ...]] | None = None
    decoded: dict[str, list[np.ndarray]] = {}
    for split, items in files.splits.items():
        decoded[split] = []
        for file, _label in items:
            image = decode_image(file, image_size, color)
            if first is None:
                first = (file, image.shape[:2])
            elif image.shape[:2] != first[1]:
                raise DataError(
                    f"dataset: {file} is {_size_text(image.shape)} pixels but {first[0]} is "
                    f"{_size_text(first[1])} pixels; fix: pass --image-size N to resize every "
                    "image to N x N"
                )
            decoded[split].append(image)
    if color is None:
        # Grey unless some image has colour: an RGB file whose channels are all equal
        # (a grey scan saved as RGB, a JPEG) counts as grey.
        coloured = any(
            image.shape[2] == 3 and not _is_grey(image)
            for images in decoded.values()
            for image in images
        )
        channels = 3 if coloured else 1
        for images in decoded.values():
            images[:] = [_with_channels(image, channels) for image in images]
    arrays: dict[str, np.ndarray] = {}
    for split, items in files.splits.items():
        arrays[f"x_{split}"] = np.ascontiguousarray(np.stack(decoded[split]).transpose(0, 3, 1, 2))
        arrays[f"y_{split}"] = np.array([label for _file, label in items], dtype=np.int64)
    return arrays


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image viewers say


def _is_grey(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def _with_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    return image[..., :1]  # only grey RGB images are made one-channel here: channels equal


def decode_image(file: Path, image_size: int | None, color: str | None) -> np.ndarray:
    """One image as (H, W, C) uint8: C = 1 for "gray", 3 for "rgb", and for `color` None
    whichever its file holds. Resized to image_size x image_size when given (Lanczos,
    which filters when shrinking, so thin strokes do not alias away)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened)  # photos taken sideways
            if color is None:
                color = "gray" if image.mode in GREY_MODES else "rgb"
            image = _convert(image, color)
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
            array = np.asarray(image)
    except (
        Exception
    ) as error:  # Pillow raises many types (OSError, SyntaxError, ...) for damaged files
        raise DataError(
            f"dataset: cannot read image {file} ({one_line(error)}); fix: replace or delete the file"
        ) from None
    return array[..., None] if array.ndim == 2 else array


def _convert(image, color: str):
    from PIL import Image

    if image.mode.startswith("I"):
        # Pillow clips 16-bit grey to 255 when converting to "L"; scale it down instead.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
    return image.convert("L" if color == "gray" else "RGB")


# --- cache files ---------------------------------------------------------------------------


def read_cache(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is absent or damaged."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {key: saved[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    handle = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: processes racing to fill the cache never read half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, **arrays)
        os.replace(handle.name, path)
    except OSError:  # a cache that cannot be written only costs the next process time
        if handle is not None:
            Path(handle.name).unlink(missing_ok=True)
