"""Ground-truth factors of variation: what a dataset like dSprites knows about each image
(its shape, scale, orientation, position), and sampling by factor, which the
disentanglement metrics need: fix one factor, let the others vary.

A factor's values are indices 0..size-1 (dSprites' `latents_classes`), one column per
factor. Sampling draws from the images at hand (a split, or the subset of it that was
encoded), so a fixed factor's value is drawn as often as it occurs there; on dSprites'
full grid that is disentanglement_lib's uniform draw of every factor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from trainables.errors import DataError


@dataclass(frozen=True)
class Factors:
    """The factors of N images: `values[i, k]` is image i's value of factor k."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]  # how many values each factor takes
    values: torch.Tensor  # (N, K) int64 in 0..sizes[k]-1
    # Per factor, per value, the images that have it (built on first use).
    _members: dict[int, list[torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.values.dim() != 2 or self.values.shape[1] != len(self.names):
            raise DataError(
                f"factors: expected one column per factor ({len(self.names)}: "
                f"{', '.join(self.names)}), got an array of shape {tuple(self.values.shape)}"
            )
        if len(self.sizes) != len(self.names):
            raise DataError(f"factors: {len(self.names)} names but {len(self.sizes)} sizes")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device: str | torch.device) -> Factors:
        return dataclasses.replace(self, values=self.values.to(device))

    def subset(self, index: torch.Tensor) -> Factors:
        """The factors of the images `index` picks (in that order)."""
        return dataclasses.replace(self, values=self.values[index.to(self.device)])

    def varying(self) -> tuple[int, ...]:
        """The factors that take more than one value here (dSprites' colour takes one):
        the only ones a metric can score."""
        return tuple(
            k for k in range(len(self.names)) if int(self.values[:, k].unique().numel()) > 1
        )

    def members(self, factor: int) -> list[torch.Tensor]:
        """For each value of `factor`, the indices of the images that have it."""
        if factor not in self._members:
            column = self.values[:, factor]
            self._members[factor] = [
                torch.nonzero(column == v).squeeze(1) for v in range(self.sizes[factor])
            ]
        return self._members[factor]

    def sample_fixing(
        self, factor: int, groups: int, group_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """`groups` rows of `group_size` image indices; the images of a row share their
        value of `factor` and are drawn uniformly (with replacement) among the images
        with that value, so every other factor varies as it does in the data. A row's
        value is that of an image drawn uniformly, so values occur as often as in the
        data. Returns a (groups, group_size) int64 tensor on the factors' device."""
        anchors = torch.randint(len(self), (groups,), generator=generator)
        anchor_values = self.values[anchors.to(self.device), factor].cpu()
        members = self.members(factor)
        rows = torch.empty(groups, group_size, dtype=torch.int64)
        for value in anchor_values.unique().tolist():
            pool = members[value].cpu()
            rows_with_value = torch.nonzero(anchor_values == value).squeeze(1)
            picks = torch.randint(
                len(pool), (len(rows_with_value), group_size), generator=generator
            )
            rows[rows_with_value] = pool[picks]
        return rows.to(self.device)


def check_factor_values(splits: dict, names, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and sizes of the factors stored in file `where`: `splits` maps an array's
    name (factors_train, factors_test) to its (N, K) values, `names` is None or the K
    names. Sizes are the largest value + 1 over every split. Anything else is a one-line
    DataError naming the file, the array and the fix."""
    import numpy as np

    columns = {}
    for key, values in splits.items():
        array = np.asarray(values)
        if array.ndim != 2:
            raise DataError(
                f"dataset: {where}: {key} has shape {array.shape}; fix: store one row per "
                "image and one column per factor, (N, K)"
            )
        if array.dtype.kind not in "iu":
            raise DataError(
                f"dataset: {where}: {key} holds {array.dtype} values; fix: store each "
                "factor's value as an integer index 0..n-1, e.g. factors.astype(numpy.int64)"
            )
        if array.size and array.min() < 0:
            raise DataError(
                f"dataset: {where}: {key} has {int((array < 0).sum())} negative values (the "
                f"smallest is {int(array.min())}); fix: number each factor's values 0..n-1"
            )
        columns[key] = array.shape[1]
    if len(set(columns.values())) > 1:
        shown = " but ".join(
            f"{key} has {k} column{'s' if k != 1 else ''}" for key, k in columns.items()
        )
        raise DataError(
            f"dataset: {where}: {shown}; fix: store the same factors, one column each, in "
            "every split"
        )
    k = next(iter(columns.values()), 0)
    names = (
        tuple(f"factor_{i}" for i in range(k))
        if names is None
        else _check_factor_names(names, k, where)
    )
    sizes = tuple(
        max((int(np.asarray(v)[:, i].max()) + 1 for v in splits.values() if len(v)), default=0)
        for i in range(k)
    )
    return names, sizes


def _check_factor_names(names, k: int, where: str) -> tuple[str, ...]:
    import numpy as np

    array = np.asarray(names)
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise DataError(
            f"dataset: {where}: factor_names is {array.dtype} of shape {array.shape}; fix: "
            "store the names as a 1-D numpy string array, e.g. numpy.array(['shape', 'scale'])"
        )
    found = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in array.tolist())
    if len(found) != k:
        raise DataError(
            f"dataset: {where}: factor_names has {len(found)} names but the factors have {k} "
            "columns; fix: give one name per column"
        )
    if len(set(found)) != k:
        raise DataError(
            f"dataset: {where}: factor_names repeats a name ({', '.join(found)}); fix: name "
            "each factor once"
        )
    return found
