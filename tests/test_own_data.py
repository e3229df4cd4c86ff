"""Datasets from the user's own files (npz:PATH, folder:PATH), images of any shape and
channel count, and the one-line errors bad files give."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import ConfigError, DataError, load_dataset
from trainables.config import check_dataset_name, dataset_label
from trainables.images import class_colours, save_grid, scatter_picture

N_TRAIN, N_TEST, N_CLASSES = 30, 9, 3

# --- building files --------------------------------------------------------------------------


def npz_arrays(shape=(4, 5), dtype=np.uint8, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid set: every class in both splits; images of `shape`, uint8 or float."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        pixels = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        return pixels if dtype == np.uint8 else (pixels / 255.0).astype(dtype)

    return {
        "x_train": images(N_TRAIN),
        "y_train": np.arange(N_TRAIN) % N_CLASSES,
        "x_test": images(N_TEST),
        "y_test": np.arange(N_TEST) % N_CLASSES,
    }


def with_factors(arrays: dict[str, np.ndarray], names: bool = True) -> dict[str, np.ndarray]:
    """`arrays` with two factors per image (a 3-valued one, and a 4-valued one whose last
    value only the test split has), and their names."""
    factors = {
        f"factors_{split}": np.stack(
            [np.arange(n) % 3, np.arange(n) % (3 if split == "train" else 4)], 1
        )
        for split, n in (("train", N_TRAIN), ("test", N_TEST))
    }
    named = {"factor_names": np.array(["hue", "size"])} if names else {}
    return {**arrays, **factors, **named}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def random_pixels(rng, size=(5, 4), mode: str = "RGB") -> np.ndarray:
    """(height, width[, 3]) uint8 for an image `size` = (width, height)."""
    width, height = size
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_folder(
    root: Path, counts: dict[str, int], mode: str = "RGB", split: bool = False, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """PNG files, `counts[class]` per class (per split when `split`); returns
    {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for prefix in ("train/", "test/") if split else ("",):
        for name, count in counts.items():
            for i in range(count if prefix != "test/" else max(1, count // 3)):
                relative = f"{prefix}{name}/{i:03d}.png"
                pixels = random_pixels(rng, mode=mode)
                write_image(root / relative, pixels)
                written[relative] = pixels
    return written


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).numpy()


def loaded_images(dataset, split: str) -> list[tuple[bytes, int]]:
    """(H, W, C) pixel bytes and label of every image of a split, to compare as a multiset."""
    x = getattr(dataset, f"x_{split}").view(-1, *dataset.image_shape).permute(0, 2, 3, 1)
    y = getattr(dataset, f"y_{split}").tolist()
    return sorted((as_uint8(image).tobytes(), label) for image, label in zip(x, y, strict=True))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("LATENT_STUDIES_CACHE", str(directory))
    return directory


# --- names ---------------------------------------------------------------------------------


def test_dataset_names_are_checked_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_dataset_name("digits") == "digits"
    assert check_dataset_name("npz:data/x.npz") == f"npz:{tmp_path / 'data' / 'x.npz'}"
    assert check_dataset_name("folder:pets/") == f"folder:{tmp_path / 'pets'}"
    assert check_dataset_name("npz:~/x.npz") == f"npz:{Path.home() / 'x.npz'}"
    for bad in ("cifar", "png:x", "npz:", "folder: ", ":x"):
        with pytest.raises(ConfigError, match=r"^dataset: ") as info:
            check_dataset_name(bad)
        assert "\n" not in str(info.value) and ":PATH" in str(info.value)
    assert dataset_label("mnist") == "mnist"
    assert dataset_label("npz:/data/my scans (v2).npz") == "my_scans_v2"
    assert dataset_label("folder:/data/pets/") == "pets"
    assert dataset_label("folder:/data/..") == "folder"  # the root: nothing left but the kind


# --- npz -----------------------------------------------------------------------------------


def test_npz_of_uint8_greyscale_images(tmp_path):
    arrays = npz_arrays()
    name = write_npz(tmp_path / "scans.npz", arrays)
    dataset = load_dataset(name)
    assert dataset.name == name and dataset.source == str(tmp_path / "scans.npz")
    assert dataset.image_shape == (1, 4, 5) and dataset.channels == 1
    assert dataset.n_classes == N_CLASSES and dataset.class_names == () and dataset.notes == ()
    assert dataset.x_train.shape == (N_TRAIN, 20) and dataset.x_test.shape == (N_TEST, 20)
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["x_train"].reshape(N_TRAIN, -1) / 255.0).float()
    torch.testing.assert_close(dataset.x_train, expected)
    assert dataset.y_test.tolist() == arrays["y_test"].tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_npz_colour_images_are_stored_channel_first(tmp_path, dtype):
    arrays = npz_arrays(shape=(4, 5, 3), dtype=dtype)
    # Channels that differ everywhere: red 0.2, green 0.6, blue the random pixels.
    scale = 255 if dtype == np.uint8 else 1.0
    arrays["x_train"][..., 0] = round(0.2 * 255) if dtype == np.uint8 else 0.2
    arrays["x_train"][..., 1] = round(0.6 * 255) if dtype == np.uint8 else 0.6
    dataset = load_dataset(write_npz(tmp_path / "rgb.npz", arrays))
    assert dataset.image_shape == (3, 4, 5) and dataset.channels == 3
    images = dataset.x_train.view(N_TRAIN, 3, 4, 5)
    torch.testing.assert_close(images[:, 0], torch.full((N_TRAIN, 4, 5), 0.2), atol=2e-3, rtol=0)
    torch.testing.assert_close(images[:, 1], torch.full((N_TRAIN, 4, 5), 0.6), atol=2e-3, rtol=0)
    blue = torch.from_numpy(arrays["x_train"][..., 2] / scale).float()
    torch.testing.assert_close(images[:, 2], blue)
    assert dataset.x_test.min() >= 0.0 and dataset.x_test.max() <= 1.0


def test_npz_with_one_channel_last_is_greyscale(tmp_path):
    arrays = npz_arrays(shape=(4, 5, 1))
    dataset = load_dataset(write_npz(tmp_path / "one.npz", arrays))
    assert dataset.image_shape == (1, 4, 5)
    torch.testing.assert_close(
        dataset.x_train, load_dataset(write_npz(tmp_path / "flat.npz", npz_arrays())).x_train
    )


def test_npz_digest_is_stable_and_follows_the_content(tmp_path):
    arrays = npz_arrays()
    first = load_dataset(write_npz(tmp_path / "a.npz", arrays))
    copy = load_dataset(write_npz(tmp_path / "b.npz", arrays))
    assert len(first.digest) == 16 and first.digest == copy.digest
    assert load_dataset(f"npz:{tmp_path / 'a.npz'}").digest == first.digest
    arrays["x_test"][0, 0, 0] ^= 1
    assert load_dataset(write_npz(tmp_path / "c.npz", arrays)).digest != first.digest


def test_npz_factors_are_read_with_their_names_and_sizes(tmp_path):
    arrays = with_factors(npz_arrays())
    dataset = load_dataset(write_npz(tmp_path / "factors.npz", arrays))
    assert dataset.has_factors
    for split in ("train", "test"):
        factors = getattr(dataset, f"factors_{split}")
        assert factors.names == ("hue", "size") and factors.sizes == (3, 4)
        assert factors.values.dtype == torch.int64
        assert factors.values.tolist() == arrays[f"factors_{split}"].tolist()
    # Without names the factors are numbered; without factors there are none.
    del arrays["factor_names"]
    unnamed = load_dataset(write_npz(tmp_path / "unnamed.npz", arrays))
    assert unnamed.factors_test.names == ("factor_0", "factor_1")
    assert unnamed.digest == dataset.digest  # the names are not data
    plain = load_dataset(write_npz(tmp_path / "plain.npz", npz_arrays()))
    assert not plain.has_factors and plain.factors_train is None and plain.factors_test is None
    assert plain.digest != dataset.digest


def test_factors_move_with_the_dataset(tmp_path):
    dataset = load_dataset(write_npz(tmp_path / "f.npz", with_factors(npz_arrays())))
    moved = dataset.to("meta")
    assert moved.factors_train.device.type == "meta" and moved.factors_test.device.type == "meta"
    assert moved.factors_train.names == ("hue", "size")
    assert dataset.factors_train.device.type == "cpu"


def test_classes_are_counted_from_the_labels_and_the_smallest_found(tmp_path):
    arrays = npz_arrays()
    arrays["y_train"] = np.array([0] * 20 + [1] * 3 + [2] * 7, dtype=np.uint8)
    arrays["y_test"] = np.zeros(N_TEST, dtype=np.int32)  # a class absent from test is fine
    dataset = load_dataset(write_npz(tmp_path / "k.npz", arrays))
    assert dataset.n_classes == 3 and dataset.y_train.dtype == torch.int64
    assert dataset.smallest_class() == (1, 3)


# --- folders -------------------------------------------------------------------------------


def test_folder_with_train_and_test(tmp_path, cache):
    written = write_folder(tmp_path / "pets", {"cat": 6, "dog": 6}, split=True)
    dataset = load_dataset(f"folder:{tmp_path / 'pets'}")
    assert dataset.class_names == ("cat", "dog") and dataset.n_classes == 2
    assert dataset.notes == ()
    assert dataset.image_shape == (3, 4, 5)  # (C, H, W) of 5-wide, 4-high images
    assert dataset.source == str(tmp_path / "pets") and len(dataset.digest) == 16
    for split in ("train", "test"):
        expected = sorted(
            (pixels.tobytes(), ("cat", "dog").index(path.split("/")[1]))
            for path, pixels in written.items()
            if path.startswith(split)
        )
        assert loaded_images(dataset, split) == expected, split
    # Each split in a seeded order, not class by class (the first test images are what
    # the reconstruction grid shows).
    assert len(set(dataset.y_train[:6].tolist())) == 2


def test_folder_without_a_split_is_split_80_20_per_class_and_says_so(tmp_path, cache):
    root = tmp_path / "shapes"
    written = write_folder(root, {"b": 10, "a": 5, "c": 1}, mode="L")
    dataset = load_dataset(f"folder:{root}")
    (note,) = dataset.notes
    assert note.startswith(f"folder:{root} has no train/ and test/; split 80/20 per class")
    assert "seed 0" in note and "train/ and test/" in note
    assert dataset.class_names == ("a", "b", "c") and dataset.image_shape == (1, 4, 5)
    # Stratified: 20% of each class (rounded), always at least one training image.
    assert torch.bincount(dataset.y_test, minlength=3).tolist() == [1, 2, 0]
    assert torch.bincount(dataset.y_train, minlength=3).tolist() == [4, 8, 1]
    everything = sorted(
        (pixels[..., None].tobytes(), "abc".index(path[0])) for path, pixels in written.items()
    )
    assert sorted(loaded_images(dataset, "train") + loaded_images(dataset, "test")) == everything
    # Deterministic: the same split again from scratch (no cache).
    for file in cache.glob("folder-*.npz"):
        file.unlink()
    again = load_dataset(f"folder:{root}")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(dataset, key), getattr(again, key)), key
    assert again.digest == dataset.digest


def test_folder_colour_is_read_from_the_images_or_chosen(tmp_path, cache):
    rng = np.random.default_rng(1)
    grey_as_rgb, coloured = tmp_path / "grey", tmp_path / "colour"
    for c in ("x", "y"):
        for i in range(3):
            grey = random_pixels(rng, mode="L")
            write_image(grey_as_rgb / c / f"{i}.png", np.stack([grey] * 3, axis=2))
            write_image(coloured / c / f"{i}.png", grey)  # grey files...
        write_image(coloured / c / "rgb.png", random_pixels(rng))  # ...and one colour each
    # An RGB file whose channels are equal is grey; one coloured image makes all RGB.
    assert load_dataset(f"folder:{grey_as_rgb}").image_shape == (1, 4, 5)
    mixed = load_dataset(f"folder:{coloured}")
    assert mixed.image_shape == (3, 4, 5)
    images = mixed.x_train.view(-1, 3, 4, 5)
    grey_rows = [(image[0] == image[1]).all() and (image[1] == image[2]).all() for image in images]
    assert any(grey_rows) and not all(grey_rows)
    # Chosen: "gray" is Pillow's mode "L" conversion, "rgb" repeats grey into 3 channels.
    as_grey = load_dataset(f"folder:{coloured}", color="gray")
    assert as_grey.image_shape == (1, 4, 5)
    expected = sorted(
        np.asarray(Image.open(f).convert("L"))[..., None].tobytes() for f in coloured.rglob("*.png")
    )
    found = sorted(b for b, _ in loaded_images(as_grey, "train") + loaded_images(as_grey, "test"))
    assert found == expected
    assert load_dataset(f"folder:{grey_as_rgb}", color="rgb").image_shape == (3, 4, 5)


def test_folder_images_are_stored_channel_first(tmp_path, cache):
    for c in ("p", "q"):
        for i in range(2):
            write_image(
                tmp_path / "flat" / c / f"{i}.PNG", np.full((4, 5, 3), (255, 0, 51), np.uint8)
            )
    dataset = load_dataset(f"folder:{tmp_path / 'flat'}")
    images = dataset.x_train.view(len(dataset.x_train), 3, 4, 5)
    assert (images[:, 0] == 1.0).all() and (images[:, 1] == 0.0).all()
    torch.testing.assert_close(images[:, 2], torch.full_like(images[:, 2], 0.2))


def test_folder_images_of_different_sizes_are_resized_to_image_size(tmp_path, cache):
    rng = np.random.default_rng(2)
    root = tmp_path / "sizes"
    for c, size in (("a", (9, 7)), ("b", (3, 12))):
        for i in range(3):
            write_image(root / c / f"{i}.jpg", random_pixels(rng, size=size))
    dataset = load_dataset(f"folder:{root}", image_size=6)
    assert dataset.image_shape == (3, 6, 6) and dataset.x_train.shape[1] == 108
    assert dataset.x_train.min() >= 0.0 and dataset.x_train.max() <= 1.0
    assert load_dataset(f"folder:{root}", image_size=2, color="gray").image_shape == (1, 2, 2)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path, cache):
    # Pillow converts 16-bit grey to 8-bit by clipping at 255: everything would be white.
    for c in ("a", "b"):
        pixels = np.full((4, 5), 257 * 100, dtype=np.uint16)
        write_image(tmp_path / "deep" / c / "0.png", pixels)
        write_image(tmp_path / "deep" / c / "1.png", pixels)
    dataset = load_dataset(f"folder:{tmp_path / 'deep'}")
    assert dataset.image_shape == (1, 4, 5)
    assert torch.allclose(dataset.x_train, torch.tensor(100 / 255))


def test_folder_decodes_once_then_reads_the_cache(tmp_path, cache, monkeypatch):
    root = tmp_path / "cached"
    write_folder(root, {"a": 4, "b": 4})
    first = load_dataset(f"folder:{root}")
    assert len(list(cache.glob("folder-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache holds them")

    real_open = Image.open
    monkeypatch.setattr(Image, "open", no_decoding)
    second = load_dataset(f"folder:{root}")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key
    assert second.digest == first.digest and second.notes == first.notes
    # Other options, or a changed file, are another key: they decode again.
    with pytest.raises(DataError, match="decoded an image"):
        load_dataset(f"folder:{root}", image_size=3)
    changed = root / "a" / "000.png"
    write_image(changed, np.zeros((4, 5, 3), np.uint8))
    os.utime(changed, ns=(1, 1))
    with pytest.raises(DataError, match="decoded an image"):
        load_dataset(f"folder:{root}")
    monkeypatch.setattr(Image, "open", real_open)
    assert load_dataset(f"folder:{root}").digest != first.digest


def test_a_damaged_cache_file_is_decoded_again(tmp_path, cache):
    root = tmp_path / "damaged"
    write_folder(root, {"a": 3, "b": 3})
    first = load_dataset(f"folder:{root}")
    (cached,) = cache.glob("folder-*.npz")
    cached.write_bytes(b"not a zip file")
    assert load_dataset(f"folder:{root}").digest == first.digest


# --- options -------------------------------------------------------------------------------


def test_image_size_and_color_apply_to_folders_only(tmp_path):
    name = write_npz(tmp_path / "x.npz", npz_arrays())
    for dataset in (name, "digits"):
        with pytest.raises(DataError, match=r"^image-size: .*folder: datasets"):
            load_dataset(dataset, image_size=8)
        with pytest.raises(DataError, match=r"^color: .*folder: datasets"):
            load_dataset(dataset, color="rgb")
    with pytest.raises(DataError, match=r"^image-size: expected a whole number"):
        load_dataset(f"folder:{tmp_path}", image_size=0)
    with pytest.raises(DataError, match=r"^color: expected one of gray, rgb, got 'red'"):
        load_dataset(f"folder:{tmp_path}", color="red")


# --- bad data ------------------------------------------------------------------------------


def bad_npz(base=None, **change):
    """A case: write a valid npz (`base(arrays)` of the usual ones, when given) with
    `change` applied (None removes an array)."""

    def make(tmp_path: Path) -> tuple[str, Path]:
        arrays = npz_arrays()
        arrays = base(arrays) if base is not None else arrays
        for key, value in change.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value(arrays[key]) if callable(value) else value
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        return f"npz:{path}", path

    return make


def bad_factors(**change):
    """A case: a valid npz with factors, then `change` applied as bad_npz does."""
    return bad_npz(with_factors, **change)


def raw_file(content: bytes, name: str = "bad.npz", kind: str = "npz"):
    def make(tmp_path: Path) -> tuple[str, Path]:
        path = tmp_path / name
        path.write_bytes(content)
        return f"{kind}:{path}", path

    return make


def npy_file(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "one.npy"
    np.save(path, np.zeros((3, 4, 4), np.uint8))
    return f"npz:{path}", path


def pickled_npz(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "pickled.npz"
    arrays = npz_arrays()
    arrays["y_train"] = np.array([str(i) for i in range(N_TRAIN)], dtype=object)
    np.savez(path, **arrays)
    return f"npz:{path}", path


def with_nan(x: np.ndarray) -> np.ndarray:
    x = x / 255.0
    x[0, 0, :2] = np.nan
    x[1, 0, 0] = np.inf
    return x


def folder_case(counts: dict[str, int], split: bool = False, then=None):
    """A case: a valid folder of PNGs, then `then(root)` breaks it; the path to name is
    what `then` returns (the folder by default)."""

    def make(tmp_path: Path) -> tuple[str, Path]:
        root = tmp_path / "images"
        root.mkdir()
        write_folder(root, counts, split=split)
        named = then(root) if then else root
        return f"folder:{root}", named or root

    return make


def empty_class(root: Path) -> Path:
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    return root / "empty"


def unreadable_image(root: Path) -> Path:
    (root / "a" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing valid")
    return root / "a" / "001.png"


def truncated_image(root: Path) -> Path:
    path = root / "b" / "000.png"
    path.write_bytes(path.read_bytes()[:60])
    return path


def other_size(root: Path) -> Path:
    path = root / "b" / "001.png"
    write_image(path, np.zeros((7, 3, 3), np.uint8))
    return path


def rename_a_test_class(root: Path) -> Path:
    (root / "test" / "a").rename(root / "test" / "z")
    return root


def drop_test(root: Path) -> Path:
    (root / "test").rename(root / "held-out")
    return root


BAD_DATA = {
    "npz missing": (
        lambda tmp: (f"npz:{tmp / 'absent.npz'}", tmp / "absent.npz"),
        "does not exist",
    ),
    "empty file": (raw_file(b"", "empty.npz"), "it is empty"),
    "npz is a folder": (lambda tmp: (f"npz:{tmp}", tmp), "is a folder"),
    "not an npz": (raw_file(b"x_train,y_train\n1,2\n"), "not a zip archive"),
    "an npy file": (npy_file, "an .npy file of one array"),
    "damaged zip": (raw_file(b"PK\x03\x04" + b"\0" * 40), "cannot read"),
    "pickled array": (pickled_npz, "cannot read"),
    "missing array": (bad_npz(y_test=None), "'y_test' (it has x_train, y_train, x_test)"),
    "lengths": (bad_npz(y_train=lambda y: y[:-1]), "x_train has 30 images but y_train has 29"),
    "flat images": (bad_npz(x_train=lambda x: x.reshape(len(x), -1)), "shape (30, 20)"),
    "four channels": (bad_npz(x_train=lambda x: np.stack([x] * 4, 3)), "4 channels"),
    "no images": (bad_npz(x_test=lambda x: x[:0]), "x_test holds no images"),
    "sizes differ": (bad_npz(x_test=lambda x: x[:, :3]), "(4, 5, 1) but x_test images (3, 5, 1)"),
    "nan": (bad_npz(x_train=with_nan), "x_train has 2 NaN and 1 infinite"),
    "float range": (bad_npz(x_test=lambda x: x.astype(np.float32)), "outside [0, 1]; fix: scale"),
    "int pixels": (bad_npz(x_train=lambda x: x.astype(np.int64)), "int64 pixels; fix: scale"),
    "float labels": (bad_npz(y_train=lambda y: y.astype(np.float32)), "float32 labels"),
    "one-hot labels": (bad_npz(y_test=lambda y: np.eye(3)[y].astype(int)), "argmax"),
    "negative labels": (bad_npz(y_test=lambda y: y - 1), "y_test has 3 negative labels"),
    "class without training samples": (
        bad_npz(y_train=lambda y: np.where(y == 1, 0, y)),
        "class 1 has no training samples",
    ),
    "test-only class": (bad_npz(y_test=lambda y: y + 2), "class 3 (and 1 more) has no"),
    "factors of one split": (
        bad_factors(factors_test=None),
        "has factors_train and factor_names but no factors_test; fix: store both",
    ),
    "factor names alone": (
        bad_factors(factors_train=None, factors_test=None),
        "has factor_names but no factors_train",
    ),
    "factor rows": (
        bad_factors(factors_train=lambda f: f[1:]),
        "factors_train has 29 rows but x_train has 30 images; fix: store one row",
    ),
    "float factors": (
        bad_factors(factors_test=lambda f: f.astype(np.float32)),
        "factors_test holds float32 values; fix: store each factor's value as an integer",
    ),
    "negative factors": (
        bad_factors(factors_train=lambda f: f - 1),
        "factors_train has 20 negative values (the smallest is -1)",
    ),
    "factor columns differ": (
        bad_factors(factors_test=lambda f: f[:, :1]),
        "factors_train has 2 columns but factors_test has 1 column; fix: store the same",
    ),
    "flat factors": (
        bad_factors(factors_test=lambda f: f[:, 0]),
        "factors_test has shape (9,); fix: store one row per image",
    ),
    "factor names count": (
        bad_factors(factor_names=np.array(["hue", "size", "tilt"])),
        "factor_names has 3 names but the factors have 2 columns",
    ),
    "factor names not strings": (
        bad_factors(factor_names=np.arange(2)),
        "factor_names is int64 of shape (2,); fix: store the names as a 1-D numpy string",
    ),
    "folder missing": (
        lambda tmp: (f"folder:{tmp / 'nowhere'}", tmp / "nowhere"),
        "does not exist",
    ),
    "folder is a file": (raw_file(b"x", "pets.zip", kind="folder"), "is a file"),
    "empty folder": (folder_case({}), "no class subfolders"),
    "class without images": (folder_case({"a": 2}, then=empty_class), "holds no .png"),
    "different classes": (
        folder_case({"a": 3, "b": 3}, split=True, then=rename_a_test_class),
        "train/ has classes a, b but test/ has b, z",
    ),
    "train without test": (
        folder_case({"a": 3}, split=True, then=drop_test),
        "has train/ but no test/",
    ),
    "unreadable image": (folder_case({"a": 3, "b": 3}, then=unreadable_image), "cannot read image"),
    "truncated image": (folder_case({"a": 3, "b": 3}, then=truncated_image), "cannot read image"),
    "one image per class": (folder_case({"a": 1, "b": 1}), "none left to test on"),
    "sizes without image_size": (
        folder_case({"a": 3, "b": 3}, then=other_size),
        "3x7 pixels; fix: pass --image-size N",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_line_naming_the_file_and_the_fix(tmp_path, cache, case):
    make, fragment = BAD_DATA[case]
    name, named = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(name)
    message = str(info.value)
    assert message.startswith("dataset: "), message
    assert "\n" not in message, message
    assert str(named) in message, f"{named} not named in {message!r}"
    assert fragment in message, message
    assert "; fix: " in message, message


def test_group_size_larger_than_a_folder_class_still_says_so(tmp_path, cache):
    from trainables.data import GroupBatcher

    write_folder(tmp_path / "few", {"a": 5, "b": 10})
    dataset = load_dataset(f"folder:{tmp_path / 'few'}")
    assert dataset.smallest_class() == (0, 4)
    with pytest.raises(DataError, match=r"^group_size: 5 exceeds the smallest class \(4 samples\)"):
        GroupBatcher(dataset.y_train, dataset.n_classes, 5, 2)


# --- pictures ------------------------------------------------------------------------------


def test_save_grid_writes_rgb_for_three_channels_and_grey_for_one(tmp_path):
    grid = torch.zeros(2, 3, 3, 4, 5)  # rows, cols, C, H, W
    grid[0, 1, 0] = 1.0  # one red image in the first row
    grid[1, 2, 2] = 1.0  # one blue image, bottom right
    saved = Image.open(save_grid(grid, tmp_path / "rgb.png", scale=1))
    assert saved.mode == "RGB" and saved.size == (3 * 6 - 1, 2 * 5 - 1)
    assert saved.getpixel((6, 0)) == (255, 0, 0)
    assert saved.getpixel((12, 5)) == (0, 0, 255)
    assert saved.getpixel((5, 0)) == (255, 255, 255)  # the gap between images is white
    assert saved.getpixel((0, 0)) == (0, 0, 0)
    grey = torch.full((2, 3, 1, 4, 5), 0.5)
    saved = Image.open(save_grid(grey, tmp_path / "grey.png", scale=2))
    assert saved.mode == "L" and saved.size == (2 * 17, 2 * 9) and saved.getpixel((0, 0)) == 128
    four_d = Image.open(save_grid(grey[:, :, 0], tmp_path / "four.png", scale=2))
    assert np.array_equal(np.asarray(four_d), np.asarray(saved))


@pytest.mark.parametrize("n_classes", [3, 10, 15, 40])
def test_class_colours_are_distinct_up_to_twenty(n_classes):
    cmap, norm, ticks = class_colours(n_classes)
    colours = {tuple(cmap(norm(label))) for label in range(n_classes)}
    if n_classes <= 20:
        assert len(colours) == n_classes and ticks == list(range(n_classes))
    else:
        assert len(colours) > 20  # a continuous map: still one colour per label
    assert norm(0) >= 0.0 and norm(n_classes - 1) <= 1.0


def test_scatter_picture_with_many_classes_and_names():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 25
    picture = scatter_picture({"z": (rng.normal(size=(60, 2)), 2)}, labels, n_classes=25)
    assert picture.dtype == torch.uint8 and picture.shape[2] == 3
    named = scatter_picture(
        {"z": (rng.normal(size=(12, 2)), 2)},
        np.arange(12) % 3,
        n_classes=3,
        class_names=("cat", "dog", "a very long class name"),
    )
    assert named.dim() == 3
