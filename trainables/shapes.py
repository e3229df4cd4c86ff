"""dSprites: rendering a grid of its images, and reading its file (the official one or one
rendered here).

The file is the official `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`'s format
(github.com/deepmind/dsprites-dataset): `imgs` (N, S, S) uint8 0/1, `latents_values` and
`latents_classes` (N, 6), the factors being color, shape, scale, orientation, posX and
posY, and the images in row-major order of their classes (image i's classes are i written
in the mixed radix of the factors' sizes; posY varies fastest). Its values: color 1.0;
shape 1, 2, 3 (square, ellipse, heart); scale linspace(0.5, 1); orientation
linspace(0, 2 pi), both ends included as in the official file; posX and posY
linspace(0, 1). The official file also holds a pickled `metadata` dict, which is neither
written nor read here.

Rendering is pure numpy and deterministic: a pixel is lit when its centre lies inside the
sprite. A sprite at scale 1 fits in a circle of radius RADIUS * S about its centre
(whatever its rotation); a centre runs from that radius plus a pixel to the opposite
edge, so no sprite enters the image's outermost ring of pixels. posX moves it right,
posY down (image rows), and orientation turns it counter-clockwise on screen.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from trainables.errors import ConfigError, DataError

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
SHAPE_NAMES = ("square", "ellipse", "heart")
OFFICIAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
FILE_PATTERN = "dsprites_ndarray_co1sh*sc*or*x*y*_*x*.npz"
KEYS = ("imgs", "latents_values", "latents_classes")
# A sprite at scale 1 lies within this fraction of the image side from its centre.
RADIUS = 0.2
# The smallest image side whose smallest ellipse (half-axis 0.05 S) still covers a pixel
# centre wherever it lies (a disc of radius sqrt(2)/2 always does), and the largest.
MIN_SIZE, MAX_SIZE = 16, 512
MAX_COUNT = 1024
# A grid whose images would take more memory than this is refused (the official one: 3 GB).
MAX_BYTES = 16 * 2**30
# Within a sprite's circle: the square's half side, the ellipse's half axes, and the
# heart (x^2 + y^2 - 1)^3 <= x^2 y^3, whose smallest enclosing circle has radius 1.25
# about (0, 0.25).
SQUARE_HALF_SIDE = math.sqrt(0.5)
ELLIPSE_AXES = (1.0, 0.5)
HEART_RADIUS, HEART_CENTRE = 1.25, 0.25
# Pixels tested per numpy pass (one posX's 32 images at 64 x 64): small enough to stay in
# the CPU's cache, which rendered the official grid 2-3 times faster than a sprite's 4M
# pixels at once.
BLOCK_PIXELS = 1 << 17
# dSprites has no split: this seed and fraction make one.
TEST_FRACTION = 0.1
SPLIT_SEED = 0
# Images decompressed per step when reading (16 MB at 64 x 64).
READ_CHUNK = 4096


@dataclass(frozen=True)
class ShapesGrid:
    """How many values each varying factor takes, and the image side in pixels."""

    shape: int = 3
    scale: int = 6
    orientation: int = 40
    x: int = 32
    y: int = 32
    size: int = 64

    def __post_init__(self) -> None:
        for name in ("shape", "scale", "orientation", "x", "y"):
            value = getattr(self, name)
            high = len(SHAPE_NAMES) if name == "shape" else MAX_COUNT
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ConfigError(
                    f"grid: {name}={value!r} is not a whole number in [1, {high}]; fix: write "
                    f"e.g. --grid {name}={getattr(ShapesGrid, name)}"
                )
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not MIN_SIZE <= self.size <= MAX_SIZE
        ):
            raise ConfigError(
                f"size: {self.size!r} is not a whole number of pixels in [{MIN_SIZE}, "
                f"{MAX_SIZE}]; fix: pass e.g. --size 64"
            )
        if self.count * self.size**2 > MAX_BYTES:
            raise ConfigError(
                f"grid: {self.count:,} images of {self.size}x{self.size} pixels need "
                f"{self.count * self.size**2 / 2**30:.0f} GiB, more than "
                f"{MAX_BYTES // 2**30} GiB; fix: fewer values per factor or a smaller --size"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        """Values per factor, in FACTOR_NAMES' order (color takes one)."""
        return (1, self.shape, self.scale, self.orientation, self.x, self.y)

    @property
    def count(self) -> int:
        return math.prod(self.sizes)

    @property
    def file_name(self) -> str:
        s = self.size
        return (
            f"dsprites_ndarray_co1sh{self.shape}sc{self.scale}or{self.orientation}"
            f"x{self.x}y{self.y}_{s}x{s}.npz"
        )

    def values(self) -> list[np.ndarray]:
        """Each factor's values, as the official file's latents_values holds them."""
        return [
            np.ones(1),
            np.arange(1.0, self.shape + 1),
            np.linspace(0.5, 1.0, self.scale),
            np.linspace(0.0, 2 * np.pi, self.orientation),
            np.linspace(0.0, 1.0, self.x),
            np.linspace(0.0, 1.0, self.y),
        ]


def parse_grid(text: str | None, size: int = 64) -> ShapesGrid:
    """A grid from `shape=3,scale=6,...` (factors not named keep the official count)."""
    counts: dict[str, int] = {}
    names = [f.name for f in fields(ShapesGrid) if f.name != "size"]
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, equals, value = (s.strip() for s in part.partition("="))
        if not equals or name not in names or not value.isdigit():
            raise ConfigError(
                f"grid: cannot read {part.strip()!r}; fix: write FACTOR=COUNT pairs "
                f"separated by commas, FACTOR one of {', '.join(names)}, e.g. "
                "--grid shape=3,scale=6,orientation=40,x=32,y=32"
            )
        if name in counts:
            raise ConfigError(f"grid: {name} is given twice; fix: give each factor once")
        counts[name] = int(value)
    return ShapesGrid(**counts, size=size)


# --- rendering -------------------------------------------------------------------------------


def latents(grid: ShapesGrid) -> tuple[np.ndarray, np.ndarray]:
    """latents_classes (N, 6) int64, every combination once in row-major order, and the
    latents_values (N, 6) float64 they stand for."""
    classes = np.indices(grid.sizes, dtype=np.int64).reshape(len(grid.sizes), -1).T
    values = np.stack([v[classes[:, k]] for k, v in enumerate(grid.values())], axis=1)
    return np.ascontiguousarray(classes), values


def render_shapes(grid: ShapesGrid = ShapesGrid()) -> dict[str, np.ndarray]:
    """Every image of `grid` with its factors: the arrays of the official file's format.
    The images take N * S * S bytes (3 GB for the official grid); rendering needs little
    more."""
    classes, values = latents(grid)
    s = grid.size
    imgs = np.empty((grid.count, s, s), dtype=np.uint8)
    per_sprite = grid.x * grid.y  # images that differ only in position: one block of imgs
    _, shapes, scales, angles, xs, ys = grid.values()
    start = 0
    for shape in range(len(shapes)):
        for scale in scales:
            for angle in angles:
                block = imgs[start : start + per_sprite].reshape(grid.x, grid.y, s, s)
                _render_positions(shape, float(scale), float(angle), xs, ys, s, block)
                start += per_sprite
    return {"imgs": imgs, "latents_values": values, "latents_classes": classes}


def _render_positions(
    shape: int,
    scale: float,
    angle: float,
    xs: np.ndarray,
    ys: np.ndarray,
    size: int,
    out: np.ndarray,
) -> None:
    """One sprite at every position, into `out` (len(xs), len(ys), size, size).

    A pixel centre's offset from the sprite's centre, in units of the sprite's radius and
    turned back by `angle`, is a sum of a term of its column (and posX) and a term of its
    row (and posY): the shape test runs on outer sums of small tables."""
    radius = RADIUS * size
    low, high = radius + 1.0, size - radius - 1.0
    pixel = np.arange(size) + 0.5
    unit = scale * radius
    # Offsets right and up from each centre to each pixel centre, per position.
    right = (pixel[None, :] - (low + xs[:, None] * (high - low))) / unit  # (x, column)
    up = ((low + ys[:, None] * (high - low)) - pixel[None, :]) / unit  # (y, row)
    cos, sin = math.cos(angle), math.sin(angle)
    # u = cos * right + sin * up, v = -sin * right + cos * up, made the shape's coordinates.
    u_x, u_y, v_x, v_y = cos * right, sin * up, -sin * right, cos * up
    offset = 0.0
    if shape == 1:
        v_x, v_y = v_x / ELLIPSE_AXES[1], v_y / ELLIPSE_AXES[1]
    elif shape == 2:
        u_x, u_y, v_x, v_y = (t * HEART_RADIUS for t in (u_x, u_y, v_x, v_y))
        offset = HEART_CENTRE
    tables = [t.astype(np.float32) for t in (u_x, u_y, v_x, v_y + offset)]
    rows = max(1, BLOCK_PIXELS // (len(ys) * size * size))
    for first in range(0, len(xs), rows):
        part = slice(first, first + rows)
        u = tables[0][part, None, None, :] + tables[1][None, :, :, None]
        v = tables[2][part, None, None, :] + tables[3][None, :, :, None]
        _inside(shape, u, v, out[part].view(np.bool_))


def _inside(shape: int, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """Whether each point (u, v) lies in `shape` (0 square, 1 ellipse, 2 heart) of
    radius 1, into the boolean array `out`; u and v are overwritten."""
    if shape == 0:
        np.abs(u, out=u)
        np.abs(v, out=v)
        np.maximum(u, v, out=u)
        np.less_equal(u, np.float32(SQUARE_HALF_SIDE), out=out)
    elif shape == 1:
        np.multiply(u, u, out=u)
        np.multiply(v, v, out=v)
        np.add(u, v, out=u)
        np.less_equal(u, np.float32(1.0), out=out)
    else:
        u2 = u * u
        v2 = v * v
        q = u2 + v2
        q -= np.float32(1.0)
        cube = q * q
        cube *= q
        v2 *= v  # v^3
        v2 *= u2  # x^2 y^3
        np.less_equal(cube, v2, out=out)


def write_shapes(out_dir: str | os.PathLike, grid: ShapesGrid = ShapesGrid()) -> Path:
    """Render `grid` into `out_dir`/grid.file_name (the directory made if missing), written
    to a temporary file then renamed over any file of that name."""
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"out: cannot create {directory} ({_one_line(error)}); fix: pass an --out "
            "directory you can write to"
        ) from None
    arrays = render_shapes(grid)
    path = directory / grid.file_name
    # Beside the file, named by this process, and opened as any new file is (so with the
    # user's umask, where a tempfile would be private to its owner).
    temporary = directory / f".{grid.file_name}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(temporary, path)
    except BaseException as error:  # an interrupted write leaves no temporary file either
        temporary.unlink(missing_ok=True)
        if not isinstance(error, OSError):
            raise
        raise DataError(
            f"out: cannot write {path} ({_one_line(error)}); fix: free space in {directory} "
            "or pass another --out"
        ) from None
    return path


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DspritesSplits:
    """A dSprites file read and split: images flattened, float32 0/1; factors int64."""

    x_train: np.ndarray  # (N_train, S*S)
    x_test: np.ndarray
    factors_train: np.ndarray  # (N_train, 6), latents_classes
    factors_test: np.ndarray
    sizes: tuple[int, ...]  # values per factor: the largest class + 1
    image_size: int
    digest: str  # of the file's bytes


def read_dsprites(path: Path, field: str = "data-dir") -> DspritesSplits:
    """The images and factors of the dSprites file at `path`, split at random (seed
    SPLIT_SEED) into 1 - TEST_FRACTION for training and TEST_FRACTION for testing, each
    split in that seeded order. What is wrong with the file is a one-line DataError
    starting `field: ` (the option that named the file).

    Memory: the float32 images and one chunk of READ_CHUNK uint8 images. The official
    file's 737,280 images of 64 x 64 take 12.1 GB as float32 (3 GB as stored); the stored
    images are never held whole: they are decompressed a chunk at a time straight into
    their split."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [key for key in KEYS if key not in members]
            if missing:
                has = ", ".join(sorted(members)) or "no arrays"
                raise _Damaged(f"has no array {missing[0]!r} (it has {has})")
            with archive.open(members["latents_classes"]) as member:
                classes = np.lib.format.read_array(member, allow_pickle=False)
            with archive.open(members["latents_values"]) as member:
                values_header = _npy_header(member)
            _check_latents(classes, *values_header)
            with archive.open(members["imgs"]) as member:
                size = _check_imgs(*_npy_header(member), len(classes))
                return _read_split(member, classes.astype(np.int64), size, path)
    except _Damaged as damaged:
        problem = str(damaged)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        problem = f"cannot be read ({_one_line(error)})"
    raise DataError(f"{field}: {path} {problem}; {dsprites_fix(str(path.parent))}")


class _Damaged(Exception):
    """What is wrong with a dSprites file, said after its path."""


def dsprites_fix(directory: str) -> str:
    """What to do about a missing or damaged dSprites file in `directory`."""
    return (
        f"fix: download {OFFICIAL_FILE} from github.com/deepmind/dsprites-dataset into "
        f"{directory} (this tool never downloads it), or render one there with `study data "
        f"shapes --out {directory}`"
    )


def _npy_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An .npy member's shape, Fortran order and dtype, leaving `member` at its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    return np.lib.format.read_array_header_2_0(member)


def _check_latents(classes: np.ndarray, values_shape, _fortran, values_dtype) -> None:
    k = len(FACTOR_NAMES)
    if classes.ndim != 2 or classes.shape[1] != k or classes.dtype.kind not in "iu":
        raise _Damaged(
            f"holds latents_classes of {classes.dtype} and shape {classes.shape}, not "
            f"integers of shape (N, {k})"
        )
    if tuple(values_shape) != classes.shape or np.dtype(values_dtype).kind != "f":
        raise _Damaged(
            f"holds latents_values of {values_dtype} and shape {tuple(values_shape)}, not "
            f"floats of latents_classes' shape {classes.shape}"
        )
    if len(classes) == 0:
        raise _Damaged("holds no images")
    if classes.min() < 0 or classes[:, 1].max() >= len(SHAPE_NAMES):
        raise _Damaged(
            "holds latents_classes outside 0..n-1, or shape classes other than 0, 1, 2 "
            f"({', '.join(SHAPE_NAMES)})"
        )


def _check_imgs(shape, fortran: bool, dtype, n: int) -> int:
    """The image side, once imgs is (n, S, S) uint8 in C order."""
    if len(shape) != 3 or shape[1] != shape[2] or np.dtype(dtype) != np.uint8 or fortran:
        raise _Damaged(f"holds imgs of {dtype} and shape {tuple(shape)}, not uint8 (N, S, S)")
    if shape[0] != n:
        raise _Damaged(f"holds {shape[0]} images in imgs but {n} rows of latents_classes")
    return int(shape[1])


def _read_split(member, classes: np.ndarray, size: int, path: Path) -> DspritesSplits:
    """Decompress imgs a chunk at a time into the split each image belongs to."""
    n = len(classes)
    n_test = round(n * TEST_FRACTION)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)  # image i goes to row position[i] of test, then train
    pixels = size * size
    x_test = np.empty((n_test, pixels), dtype=np.float32)
    x_train = np.empty((n - n_test, pixels), dtype=np.float32)
    for start in range(0, n, READ_CHUNK):
        rows = min(READ_CHUNK, n - start)
        data = member.read(rows * pixels)
        if len(data) != rows * pixels:
            raise _Damaged(f"is cut short: imgs ends after {start + len(data) // pixels} images")
        chunk = np.frombuffer(data, dtype=np.uint8).reshape(rows, pixels)
        if chunk.max() > 1:
            raise _Damaged(f"holds pixels of value {int(chunk.max())}; dSprites' are 0 or 1")
        rows_at = position[start : start + rows]
        test = rows_at < n_test
        x_test[rows_at[test]] = chunk[test]
        x_train[rows_at[~test] - n_test] = chunk[~test]
    if member.read(1):  # reading to the end also has zipfile check the member's CRC
        raise _Damaged(f"holds more than the {n} images its header says")
    return DspritesSplits(
        x_train,
        x_test,
        classes[order[n_test:]],
        classes[order[:n_test]],
        tuple(int(m) + 1 for m in classes.max(axis=0)),
        size,
        _file_digest(path),
    )


def _file_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file: of its 23 MB rather than the
    3 GB of pixels it holds, which would take seconds to hash."""
    hashed = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hashed.update(block)
    return hashed.hexdigest()[:16]
