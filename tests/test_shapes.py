"""Rendered dSprites (trainables.shapes): the official file's format and order, each factor
doing to the image what it should, `study data shapes`, and `--dataset dsprites` reading
the file back with its factors."""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import ConfigError, DataError, load_dataset
from trainables.shapes import (
    FACTOR_NAMES,
    OFFICIAL_FILE,
    RADIUS,
    SQUARE_HALF_SIDE,
    ShapesGrid,
    parse_grid,
    render_shapes,
    write_shapes,
)

SMALL = ShapesGrid(shape=3, scale=2, orientation=4, x=4, y=4, size=32)
SHAPE, SCALE, ORIENTATION, POS_X, POS_Y = range(1, 6)
STUDY = Path(sys.executable).parent / "study"


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return render_shapes(SMALL)


def pick(arrays: dict[str, np.ndarray], **classes: int) -> np.ndarray:
    """The images whose factor classes are `classes` (by FACTOR_NAMES), in file order."""
    chosen = np.ones(len(arrays["imgs"]), dtype=bool)
    for name, value in classes.items():
        chosen &= arrays["latents_classes"][:, FACTOR_NAMES.index(name)] == value
    return arrays["imgs"][chosen]


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, columns = np.nonzero(image)
    return float(columns.mean()), float(rows.mean())


# --- the format ------------------------------------------------------------------------------


def test_the_default_grid_is_the_official_file():
    grid = ShapesGrid()
    assert grid.file_name == OFFICIAL_FILE
    assert grid.sizes == (1, 3, 6, 40, 32, 32) and grid.count == 737_280
    assert SMALL.file_name == "dsprites_ndarray_co1sh3sc2or4x4y4_32x32.npz"


def test_arrays_have_the_official_keys_dtypes_and_values(small):
    n = SMALL.count
    assert set(small) == {"imgs", "latents_values", "latents_classes"}
    assert small["imgs"].shape == (n, 32, 32) and small["imgs"].dtype == np.uint8
    assert set(np.unique(small["imgs"])) == {0, 1}
    assert small["latents_values"].shape == (n, 6) and small["latents_values"].dtype == np.float64
    assert small["latents_classes"].shape == (n, 6) and small["latents_classes"].dtype == np.int64
    expected = [
        [1.0],
        [1.0, 2.0, 3.0],
        [0.5, 1.0],
        [0.0, 2 * math.pi / 3, 4 * math.pi / 3, 2 * math.pi],
        [0.0, 1 / 3, 2 / 3, 1.0],
        [0.0, 1 / 3, 2 / 3, 1.0],
    ]
    for k, values in enumerate(expected):
        column = small["latents_values"][:, k]
        np.testing.assert_allclose(np.unique(column), values)
        # Each value stands for its class.
        np.testing.assert_allclose(column, np.array(values)[small["latents_classes"][:, k]])


def test_images_are_in_row_major_order_of_their_classes(small):
    sizes = np.array(SMALL.sizes)
    bases = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])  # the notebook's
    classes = small["latents_classes"]
    np.testing.assert_array_equal(classes @ bases, np.arange(SMALL.count))
    assert classes[1].tolist() == [0, 0, 0, 0, 0, 1]  # posY varies fastest
    assert classes[SMALL.y].tolist() == [0, 0, 0, 0, 1, 0]


def test_rendering_is_deterministic(small):
    again = render_shapes(SMALL)
    for key, array in small.items():
        assert array.tobytes() == again[key].tobytes(), key


# --- what each factor does ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_posx_moves_right_and_posy_down(small, shape):
    for orientation in range(SMALL.orientation):
        fixed = {"shape": shape, "scale": 1, "orientation": orientation}
        xs = [centre_of_mass(pick(small, **fixed, posX=i, posY=1)[0])[0] for i in range(4)]
        ys = [centre_of_mass(pick(small, **fixed, posX=1, posY=j)[0])[1] for j in range(4)]
        assert np.all(np.diff(xs) > 0), xs
        assert np.all(np.diff(ys) > 0), ys


def test_scale_grows_the_area(small):
    for shape in range(3):
        for orientation in range(SMALL.orientation):
            areas = [
                pick(small, shape=shape, scale=s, orientation=orientation).sum(axis=(1, 2))
                for s in range(SMALL.scale)
            ]
            assert np.all(areas[1] > areas[0])


def test_a_rotated_square_keeps_its_area_within_pixel_discretisation():
    """The pixel centres inside a convex shape of area A and perimeter P number more than
    A - P/2 and at most A + P/2 + 1 (Nosarzewska's bounds for lattice points)."""
    grid = ShapesGrid(shape=1, scale=2, orientation=40, x=1, y=1, size=64)
    arrays = render_shapes(grid)
    for scale_class, scale in enumerate((0.5, 1.0)):
        side = 2 * SQUARE_HALF_SIDE * RADIUS * grid.size * scale
        area, perimeter = side**2, 4 * side
        counts = pick(arrays, scale=scale_class).sum(axis=(1, 2))
        assert len(counts) == 40
        assert np.all(counts > area - perimeter / 2), (area, counts)
        assert np.all(counts <= area + perimeter / 2 + 1), (area, counts)
        # Orientation changes the square: at 0 and 90 degrees it is axis-aligned, between not.
        assert len({image.tobytes() for image in pick(arrays, scale=scale_class)}) > 10


def test_shapes_differ(small):
    for orientation in range(SMALL.orientation):
        images = [
            pick(small, shape=s, scale=1, orientation=orientation, posX=1, posY=2)[0]
            for s in range(3)
        ]
        areas = [int(image.sum()) for image in images]
        assert len({image.tobytes() for image in images}) == 3
        assert areas[0] != areas[1] != areas[2]


def test_every_sprite_stays_inside_the_frame():
    """The extreme positions, scales and many rotations: no sprite reaches the outermost
    ring of pixels (one cut by the frame would light it), and every image shows one."""
    grid = ShapesGrid(shape=3, scale=2, orientation=16, x=2, y=2, size=16)
    imgs = render_shapes(grid)["imgs"]
    ring = np.ones((16, 16), dtype=bool)
    ring[1:-1, 1:-1] = False
    assert not imgs[:, ring].any()
    assert imgs.sum(axis=(1, 2)).min() > 0
    # The positions span the frame: the extremes come within two pixels of it.
    lit_columns = np.nonzero(imgs.any(axis=(0, 1)))[0]
    assert lit_columns.min() <= 2 and lit_columns.max() >= 13


# --- the grid text ------------------------------------------------------------------------


def test_grid_text_is_parsed_and_checked():
    assert parse_grid(None) == ShapesGrid()
    assert parse_grid("x=8, y=4", size=32) == ShapesGrid(x=8, y=4, size=32)
    for bad, fragment in [
        ("nonsense", "cannot read 'nonsense'"),
        ("shape=4", "shape=4 is not a whole number in [1, 3]"),
        ("x=0", "x=0 is not"),
        ("x=two", "cannot read 'x=two'"),
        ("colour=2", "cannot read 'colour=2'"),
        ("x=2,x=3", "x is given twice"),
        ("x=1024,y=1024", "GiB"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_grid(bad)
        message = str(info.value)
        assert message.startswith("grid: ") and "fix:" in message and "\n" not in message
        assert fragment in message, message
    with pytest.raises(ConfigError, match=r"^size: 8 is not .*; fix: pass e.g. --size 64$"):
        parse_grid("", size=8)


# --- writing and reading --------------------------------------------------------------------


def render_with_cli(out: Path, grid: str = "shape=3,scale=2,orientation=4,x=4,y=4", size=16):
    return subprocess.run(
        [str(STUDY), "data", "shapes", "--out", str(out), "--grid", grid, "--size", str(size)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_study_data_shapes_writes_what_dsprites_loads(tmp_path):
    done = render_with_cli(tmp_path / "made")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "made" / "dsprites_ndarray_co1sh3sc2or4x4y4_16x16.npz"
    assert done.stdout.startswith(f"{path}: 384 images in ") and done.stdout.endswith(" s\n")
    dataset = load_dataset("dsprites", data_dir=tmp_path / "made")
    assert dataset.has_factors and dataset.source == str(path)
    assert dataset.image_shape == (1, 16, 16) and dataset.n_classes == 3
    assert dataset.class_names == ("square", "ellipse", "heart")
    assert (len(dataset.x_train), len(dataset.x_test)) == (346, 38)  # 90/10 of 384
    assert "split 90/10 at random with seed 0" in dataset.notes[0]
    for split in ("train", "test"):
        factors = getattr(dataset, f"factors_{split}")
        assert factors.names == FACTOR_NAMES and factors.sizes == (1, 3, 2, 4, 4, 4)
        # Labels are the shape factor; each image is the file's image of its factors.
        labels = getattr(dataset, f"y_{split}")
        assert torch.equal(labels, factors.values[:, SHAPE])
        with np.load(path) as stored:
            bases = np.array([384, 128, 64, 16, 4, 1])
            index = factors.values.numpy() @ bases
            expected = stored["imgs"][index].reshape(len(index), -1)
        images = getattr(dataset, f"x_{split}")
        assert images.dtype == torch.float32 and torch.equal(
            images, torch.from_numpy(expected).float()
        )
    # Every image lands in exactly one split, in a seeded order (not the file's).
    every = torch.cat([dataset.factors_train.values, dataset.factors_test.values])
    assert len(torch.unique(every, dim=0)) == 384
    assert not torch.equal(
        dataset.factors_test.values[:, SHAPE], dataset.factors_test.values[:, SHAPE].sort().values
    )
    again = load_dataset("dsprites", data_dir=tmp_path / "made")
    assert again.digest == dataset.digest and torch.equal(again.x_test, dataset.x_test)


def test_sample_fixing_on_dsprites_factors_fixes_one_and_varies_the_others(tmp_path):
    write_shapes(tmp_path, ShapesGrid(shape=3, scale=2, orientation=4, x=4, y=4, size=16))
    factors = load_dataset("dsprites", data_dir=tmp_path).factors_train
    assert factors.varying() == (SHAPE, SCALE, ORIENTATION, POS_X, POS_Y)
    generator = torch.Generator().manual_seed(0)
    for fixed in factors.varying():
        rows = factors.sample_fixing(fixed, groups=20, group_size=8, generator=generator)
        values = factors.values[rows]  # (groups, group_size, factors)
        assert rows.shape == (20, 8)
        assert (values[:, :, fixed] == values[:, :1, fixed]).all()
        for other in factors.varying():
            if other != fixed:
                assert (values[:, :, other] != values[:, :1, other]).any()


def test_an_existing_file_is_replaced_and_nothing_else_is_left(tmp_path):
    first = write_shapes(tmp_path, ShapesGrid(shape=1, scale=1, orientation=2, x=2, y=2, size=16))
    first.write_bytes(b"an older, broken file")
    second = write_shapes(tmp_path, ShapesGrid(shape=1, scale=1, orientation=2, x=2, y=2, size=16))
    assert second == first and [p.name for p in tmp_path.iterdir()] == [first.name]
    with np.load(second) as stored:
        assert stored["imgs"].shape == (8, 16, 16)


def test_the_official_file_is_preferred_and_two_rendered_files_are_refused(tmp_path):
    small = ShapesGrid(shape=1, scale=1, orientation=2, x=2, y=2, size=16)
    other = ShapesGrid(shape=2, scale=1, orientation=2, x=2, y=2, size=16)
    write_shapes(tmp_path / "dsprites", small)  # DIR/dsprites/ is looked in too
    assert load_dataset("dsprites", data_dir=tmp_path).n_classes == 1
    write_shapes(tmp_path / "dsprites", other)
    with pytest.raises(DataError) as info:
        load_dataset("dsprites", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"data-dir: {tmp_path / 'dsprites'} holds 2 rendered dSprites")
    assert small.file_name in message and other.file_name in message
    assert "keep one of them there, or name one with --dataset npz:PATH" in message
    # npz: names one, in dSprites' format.
    chosen = load_dataset(f"npz:{tmp_path / 'dsprites' / other.file_name}")
    assert chosen.n_classes == 2 and chosen.has_factors
    (tmp_path / "dsprites" / other.file_name).rename(tmp_path / "dsprites" / OFFICIAL_FILE)
    assert load_dataset("dsprites", data_dir=tmp_path).n_classes == 2


def test_a_missing_file_names_the_directory_the_file_and_both_fixes(tmp_path, monkeypatch):
    for given, named in ((tmp_path / "empty", tmp_path / "empty"), (None, "DIR")):
        with pytest.raises(DataError) as info:
            load_dataset("dsprites", data_dir=given)
        message = str(info.value)
        assert message.startswith("data-dir: ") and "\n" not in message
        assert OFFICIAL_FILE in message and "github.com/deepmind/dsprites-dataset" in message
        assert "never downloads it" in message and f"study data shapes --out {named}" in message
    monkeypatch.setenv("LATENT_STUDIES_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=f"^data-dir: no dSprites file in {tmp_path} "):
        load_dataset("dsprites")


def damaged(tmp_path: Path, change) -> Path:
    """A small rendered file with `change(arrays)` applied (or `change(path)` for bytes)."""
    grid = ShapesGrid(shape=1, scale=1, orientation=2, x=2, y=2, size=16)
    arrays = render_shapes(grid)
    path = tmp_path / grid.file_name
    if isinstance(change, dict):
        for key, value in change.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value(arrays[key])
        np.savez_compressed(path, **arrays)
    else:
        np.savez_compressed(path, **arrays)
        change(path)
    return path


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def flip_a_byte(path: Path) -> None:
    """Damage imgs' compressed data (found by its local header): it no longer inflates."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("imgs.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 20
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_a_pixel(path: Path) -> None:
    """Store the arrays uncompressed and turn one pixel on: only the CRC tells."""
    with np.load(path) as stored:
        arrays = dict(stored)
    np.savez(path, **arrays)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("imgs.npy")
    header = info.header_offset + 30 + len(info.filename) + len(info.extra)
    first = data.index(b"\n", header + 10) + 1  # the .npy header ends in a newline
    assert data[first] == 0
    data[first] = 1
    path.write_bytes(bytes(data))


DAMAGED = {
    "not a zip": (lambda p: p.write_bytes(b"nothing here"), "cannot be read"),
    "cut short": (cut_short, "cannot be read"),
    "corrupt data": (flip_a_byte, "cannot be read"),
    "bad checksum": (flip_a_pixel, "Bad CRC-32"),
    "missing key": ({"latents_classes": None}, "has no array 'latents_classes'"),
    "flat images": ({"imgs": lambda x: x.reshape(len(x), -1)}, "not uint8 (N, S, S)"),
    "float images": ({"imgs": lambda x: x.astype(np.float32)}, "holds imgs of float32"),
    "fewer factors": (
        {"latents_classes": lambda c: c[1:], "latents_values": lambda v: v[1:]},
        "holds 8 images in imgs but 7 rows of latents_classes",
    ),
    "values and classes differ": (
        {"latents_values": lambda v: v[:-1]},
        "holds latents_values of float64 and shape (7, 6), not floats of latents_classes'",
    ),
    "fewer images": (
        {"imgs": lambda x: x[:-1]},
        "holds 7 images in imgs but 8 rows of latents_classes",
    ),
    "pixels of 255": ({"imgs": lambda x: x * 255}, "pixels of value 255"),
    "five factors": (
        {"latents_classes": lambda c: c[:, :5], "latents_values": lambda v: v[:, :5]},
        "not integers of shape (N, 6)",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_file_is_one_line_naming_it_and_the_fix(tmp_path, case):
    change, fragment = DAMAGED[case]
    path = damaged(tmp_path, change)
    with pytest.raises(DataError) as info:
        load_dataset("dsprites", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"data-dir: {path} "), message
    assert "\n" not in message and fragment in message, message
    assert "; fix: download " in message and "study data shapes --out" in message
