"""What a run is configured with: a family's config (a dataclass of typed fields, validated
on creation and round-tripping to a dict, so to YAML and Ray's param_space), and the
datasets and training precisions a run may name. No torch here: the command line builds
its choices from these names before it needs torch."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from trainables.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion-mnist", "dsprites")
# What --download fetches (with torchvision); dSprites is never downloaded.
DOWNLOADABLE = ("mnist", "fashion-mnist")
# The user's own files: "npz:PATH" (an .npz archive of four arrays) or "folder:PATH" (one
# subfolder of images per class), read by trainables.own_data.
OWN_DATASET_KINDS = ("npz", "folder")
# What a folder's images are converted to: greyscale (one channel) or RGB (three).
COLORS = ("gray", "rgb")
# Training arithmetic: "bf16" runs each training step's forward pass under bfloat16
# autocast (loss terms stay float32, see losses.py); evaluation is always float32.
PRECISIONS = ("fp32", "bf16")
# Seed replicas one experiment trains at once (trainables.replicas).
MAX_SEEDS = 64
# A family's network (FamilyConfig.arch): fully connected, or Locatello et al.'s
# convolutional one (trainables.family.encoder / decoder).
Arch = Literal["mlp", "conv"]
ARCHS: tuple[str, ...] = typing.get_args(Arch)


def may_have_factors(name: str) -> bool:
    """Whether dataset `name` can carry ground-truth factors, so a sweep may optimise the
    factor metrics: dSprites always does, an npz: file when it stores them."""
    return name == "dsprites" or name.startswith("npz:")


def check_dataset_name(name: str) -> str:
    """`name` if it is a built-in dataset; for npz:PATH and folder:PATH, the same with the
    path made absolute (and `~` expanded), so every process of a study reads the same
    files whatever its working directory. Only the form is checked, not the files."""
    if name in DATASETS:
        return name
    kind, colon, path = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not colon or kind not in OWN_DATASET_KINDS:
        raise ConfigError(
            f"dataset: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, "
            "or npz:PATH / folder:PATH for your own files"
        )
    if not path.strip():
        what = (
            "an .npz file" if kind == "npz" else "a folder with one subfolder of images per class"
        )
        raise ConfigError(f"dataset: {name!r} names no path; write {kind}:PATH with PATH {what}")
    return f"{kind}:{os.path.abspath(os.path.expanduser(path))}"


def check_image_options(dataset: str, image_size: int | None, color: str | None) -> None:
    """--image-size and --color shape a folder's images; every other dataset has one shape."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2
    ):
        raise ConfigError(
            f"image-size: expected a whole number of pixels >= 2, got {image_size!r}; "
            "--image-size N resizes a folder's images to N x N"
        )
    if color is not None and color not in COLORS:
        raise ConfigError(
            f"color: expected one of {', '.join(COLORS)}, got {color!r}; --color converts "
            "a folder's images to grey or RGB"
        )
    for flag, value in (("image-size", image_size), ("color", color)):
        if value is not None and not dataset.startswith("folder:"):
            raise ConfigError(
                f"{flag}: --{flag} applies to folder: datasets only, not {dataset}; fix: drop it"
            )


def dataset_label(name: str) -> str:
    """A short name for the dataset, safe inside a study's name or a file name: the
    built-in name, or the file's stem / the folder's name, with anything outside
    [A-Za-z0-9_.-] replaced by `_`. Any other name (a benchmark's "synthetic-mnist") is
    cleaned the same way rather than refused."""
    kind, colon, path = name.partition(":")
    label = name
    if colon and kind in OWN_DATASET_KINDS and path.strip():
        # The absolute path: its last part is the folder's name even for "folder:." or "x/".
        label = os.path.basename(check_dataset_name(name).partition(":")[2])
        if kind == "npz":
            label = os.path.splitext(label)[0]
    # At most 40 characters: a default study name (family-label-time) stays within 100.
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40]
    return label.strip("._-") or kind or "dataset"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}; "
            "bf16 pays on GPUs with bfloat16 matrix units (CUDA), fp32 is the default"
        )
    return precision


def check_seeds(seeds: int) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(
            f"seeds: expected a whole number in [1, {MAX_SEEDS}], got {seeds!r}; "
            "--seeds S trains S seed replicas of the config at once"
        )
    return seeds


@dataclass
class FamilyConfig:
    """Fields every family has. Subclasses add theirs and extend `check()`.

    Values are type-checked against the annotations and range-checked by `check()` on
    creation, so a bad setting fails here, before anything reaches Ray.
    """

    lr: float = 1e-3
    batch_size: int = 64
    # "mlp": fully connected layers of the family's `hidden` widths; "conv": Locatello et
    # al.'s convolutional encoder and decoder, whose sizes are fixed (it ignores `hidden`).
    arch: Arch = "mlp"

    # Per-field (low, high) bounds, inclusive; a family adds its own.
    bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "lr": (1e-7, 10.0),
        "batch_size": (2, 65536),
    }

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), hints[field.name])
            setattr(self, field.name, value)
        for name, (low, high) in self.all_bounds().items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if (low is not None and v < low) or (high is not None and v > high):
                    raise ConfigError(
                        f"{name}: {value!r} is out of range; use a value in {_range_text(low, high)}"
                    )
        self.check()

    @classmethod
    def all_bounds(cls) -> dict[str, tuple[float | None, float | None]]:
        merged: dict[str, tuple[float | None, float | None]] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("bounds", {}))
        return merged

    def check(self) -> None:
        """Constraints between fields; raise ConfigError naming the field and the fix."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FamilyConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"{unknown[0]}: unknown parameter for this family; valid parameters: "
                f"{', '.join(cls.field_names())}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _range_text(low, high) -> str:
    if high is None:
        return f"[{low}, inf)"
    return f"[{low}, {high}]"


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field annotation, converting only where nothing is lost
    (an int where a float is wanted, a list where a tuple is)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(
                f"{name}: {value!r} is not a valid choice; choose one of {', '.join(map(str, choices))}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(name, value, args[0])
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(
                f"{name}: expected a non-empty list of {item_type.__name__}, got {value!r}; write e.g. [256, 64]"
            )
        return tuple(_coerce(name, v, item_type) for v in value)
    wrong = ConfigError(
        f"{name}: expected {annotation.__name__}, got {value!r} ({type(value).__name__}); fix the value"
    )
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool):
        raise wrong
    if annotation is float:
        if not isinstance(value, int | float):
            raise wrong
        return float(value)
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise wrong
        return value
    if annotation is str and not isinstance(value, str):
        raise wrong
    return value
