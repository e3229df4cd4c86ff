"""What every model family provides, and the pieces they share.

A family is one module in `trainables/families/` that defines a config dataclass (a
subclass of `FamilyConfig`) and a module-level `FAMILY = Family(...)` record. The registry
finds it there, so adding a family touches no other file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from trainables import cuda_graphs
from trainables.data import Dataset
from trainables.errors import ConfigError

Metrics = dict[str, float]


@dataclass
class FamilyConfig:
    """Fields every family has. Subclasses add theirs and extend `check()`.

    Values are type-checked against the annotations and range-checked by `check()` on
    creation, so a bad setting fails here, before anything reaches Ray.
    """

    lr: float = 1e-3
    batch_size: int = 64

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


@dataclass(frozen=True)
class Family:
    """The few functions a family provides; the trainable and CLI read only these."""

    name: str
    summary: str
    config_cls: type[FamilyConfig]
    build: Callable[[FamilyConfig, Dataset], nn.Module]
    make_optimizers: Callable[[nn.Module, FamilyConfig], dict[str, torch.optim.Optimizer]]
    train_epoch: Callable[..., Metrics]  # (model, optimizers, dataset, config, generator)
    evaluate: Callable[..., Metrics]  # (model, dataset, config, EvalContext)
    # "metric:max|min" pairs a sweep optimises unless told otherwise.
    default_objectives: tuple[str, ...]
    # Every metric evaluate() may return, for validating --objective.
    metric_names: tuple[str, ...]
    # Image grids to log: name -> function(model, dataset, config, ctx) -> (rows, cols, H, W) tensor
    image_grids: dict[str, Callable[..., torch.Tensor]] = dataclasses.field(default_factory=dict)
    # Whether train_epoch's step may be captured as a CUDA graph (see cuda_graphs.py).
    cuda_graphs: bool = True

    def make_config(self, values: dict[str, Any] | None = None) -> FamilyConfig:
        return self.config_cls.from_dict(dict(values or {}))


def mlp(sizes: Iterable[int], final_activation: nn.Module | None = None) -> nn.Sequential:
    """Fully connected layers with ReLU between them (none after the last unless given)."""
    sizes = list(sizes)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


def run_batches(
    batches: Iterable[torch.Tensor],
    step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> Metrics:
    """Run `step(batch_index)` over an epoch and average the terms it returns.

    Terms stay on the device until the end of the epoch, so the loop never waits for a
    `.item()` per step. Inside `cuda_graphs.replaying(graph)` each step is a graph replay.
    """
    graph = cuda_graphs.active()
    totals: dict[str, torch.Tensor] = {}
    n = 0
    for index in batches:
        terms = graph.run(step, index) if graph is not None else step(index)
        for key, value in terms.items():
            value = value.detach()
            # A clone to start: a graph's outputs are overwritten by its next replay.
            totals[key] = totals[key] + value if key in totals else value.clone()
        n += 1
    return {key: float(value) / max(n, 1) for key, value in totals.items()}


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    # Autocast (a bf16 run) covers the forward pass only: backward ops take the dtypes
    # the forward chose, and the update must run in the parameters' float32.
    with torch.autocast(loss.device.type, enabled=False):
        loss.backward()
        optimizer.step()


def adam(params: Iterable[nn.Parameter], lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel on CUDA: one launch updates every parameter, where the
    default takes several per step, and these small models are launch-bound on a GPU.
    `capturable` there keeps the step count on the GPU, so the step can be a CUDA graph."""
    params = list(params)
    cuda = params[0].is_cuda
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=cuda, capturable=cuda)


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n_classes).float()


@torch.no_grad()
def reconstruction_grid(
    model: nn.Module, dataset: Dataset, config: FamilyConfig, ctx
) -> torch.Tensor:
    """Ten test images (top row) over their reconstructions from mean codes (bottom row).
    Every family's model provides `reconstruct(x, labels)`."""
    model.eval()
    x, y = ctx.x_test[:10], ctx.y_test[:10]
    return torch.stack([x, model.reconstruct(x, y)]).view(2, len(x), *dataset.image_shape)


SCATTER_POINTS = 1000


@torch.no_grad()
def latent_scatter(model: nn.Module, dataset: Dataset, config: FamilyConfig, ctx) -> torch.Tensor:
    """Test codes coloured by label, one panel per code the model names in
    `latent_codes(x, labels)`, projected on their first two principal axes when wider than
    two: an RGB picture (H, W, 3) of uint8."""
    from trainables.images import scatter_picture

    model.eval()
    x, y = ctx.x_test[:SCATTER_POINTS], ctx.y_test[:SCATTER_POINTS]
    panels = {
        name: (principal_plane(codes.float()).cpu().numpy(), codes.shape[1])
        for name, codes in model.latent_codes(x, y).items()
    }
    return scatter_picture(panels, y.cpu().numpy())


def principal_plane(codes: torch.Tensor) -> torch.Tensor:
    """The codes themselves when 2-D (or 1-D, padded with zeros), else their projection on
    the two leading principal axes."""
    if codes.shape[1] <= 2:
        return torch.nn.functional.pad(codes, (0, 2 - codes.shape[1]))
    centred = codes - codes.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T
