"""The typed template every model family fills in, and the pieces families share.

A family is one module in `trainables/families/` that subclasses `Family` and ends with
`FAMILY = TheFamily()`; the registry finds it there, so adding a family touches no other
file. The shape is disentanglement_lib's `BaseVAE.model_fn`: a family writes its model and
one training step and declares what it reports; the base owns the epoch loop (and with it
CUDA-graph replay), the metric bookkeeping, and the checks of every evaluation against
the declarations. `trainables.contract` is the test suite every family must pass.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables import cuda_graphs, noise
from trainables.config import ARCHS, FamilyConfig
from trainables.data import Dataset, shuffled_batches
from trainables.errors import ConfigError, ContractError
from trainables.grids import Grid, MakeGrid
from trainables.metrics import RUN_METRICS, EvalContext, Metric
from trainables.noise import NoiseStream
from trainables.replicas import Replicas

__all__ = [
    "Family",
    "FamilyConfig",
    "FamilyModel",
    "Grid",
    "Metric",
    "Training",
    "adam",
    "decoder",
    "encoder",
    "encoder_width",
    "gradient_step",
    "mlp",
    "one_hot",
    "run_batches",
]

Metrics = dict[str, float]
Terms = dict[str, torch.Tensor]


class FamilyModel(nn.Module, abc.ABC):
    """A family's model. The shared image grids and the contract suite call these two, so a
    model that lacks one fails when it is built rather than when a grid is first drawn."""

    @abc.abstractmethod
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] decoded from the mean codes of `x` (the labels are for decoders
        that read them)."""

    @abc.abstractmethod
    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean codes of `x` by name; the latent scatter draws one panel per code."""


ConfigT = TypeVar("ConfigT", bound=FamilyConfig)
ModelT = TypeVar("ModelT", bound=FamilyModel)


@dataclass(frozen=True)
class Training(Generic[ConfigT, ModelT]):
    """What a training step works on besides its batch.

    A step reaches the model only through `each(fn, *tensors)`, which returns
    `fn(model, *tensors)`: one call for a solo run, and for S seed replicas
    (`replicas`) one vmapped call over all of them, whose tensors and outputs carry the
    replica dimension first. Noise inside `fn` comes from `trainables.noise`, drawn per
    replica; `model` is the stacked model (its parameters have the replica dimension)
    when there are replicas, so optimisers built from it update every replica."""

    model: ModelT
    optimizers: dict[str, torch.optim.Optimizer]
    dataset: Dataset
    config: ConfigT
    noise: NoiseStream
    replicas: Replicas | None = None

    def each(self, fn: Callable[..., Any], *tensors: Any) -> Any:
        if self.replicas is None:
            with noise.drawing(self.noise, self.noise.step_keys[0]):
                return fn(self.model, *tensors)
        return self.replicas.each(fn, self.noise, *tensors)


class Family(abc.ABC, Generic[ConfigT, ModelT]):
    """One model family. A subclass declares the class attributes below and writes
    `make_model`, `step` and `evaluate`; it may override `make_optimizers` (default: one
    Adam over all parameters), `batches` (default: shuffled full batches) and
    `reported_metrics`. The base derives the rest from those: `build`, `train_epoch`,
    `metric_names`, `default_objectives`, `image_grids`, `metric_range`, `check_metrics`
    and `make_config`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown by the CLI
    config_cls: ClassVar[type[FamilyConfig]]
    # Every metric evaluate() may return.
    metrics: ClassVar[tuple[Metric, ...]]
    # The declared metrics a sweep optimises unless told otherwise, in the direction of
    # each one's goal.
    objectives: ClassVar[tuple[str, ...]]
    grids: ClassVar[tuple[Grid, ...]]
    # Configs (changes to the defaults) whose step or evaluate() takes other branches; the
    # contract suite runs each of them besides the defaults.
    test_variants: ClassVar[tuple[dict[str, Any], ...]] = ()
    # The sizes of the paper's reference implementation for MNIST-sized images at batch
    # 256: what the benchmarks time.
    reference_config: ClassVar[Mapping[str, Any]] = {}
    # Whether the step may be recorded as a CUDA graph (cuda_graphs.py); the contract
    # suite checks on the CPU that it can be.
    cuda_graphs: ClassVar[bool] = True

    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "name",
        "summary",
        "config_cls",
        "metrics",
        "objectives",
        "grids",
    )

    def __init__(self) -> None:
        self._check_declarations()
        self._declared = {metric.name: metric for metric in self.metrics}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # --- what a family writes ------------------------------------------------------------
    @abc.abstractmethod
    def make_model(self, config: ConfigT, dataset: Dataset) -> ModelT:
        """The model for `config` and the dataset's image and label sizes."""

    @abc.abstractmethod
    def step(self, training: Training[ConfigT, ModelT], index: torch.Tensor) -> Terms:
        """One training step on the batch `training.dataset.x_train[index]`: forward pass,
        backward pass and the optimisers' updates. Returns the loss terms, "loss" among
        them, left on the device.

        The same code trains one model or S seed replicas at once: `index` is (batch,) or
        (S, batch), and the step computes through `training.each(fn, *tensors)` (see
        Training), drawing its noise from `trainables.noise`. Losses reach
        `gradient_step` as they come out of `each` (one per replica).

        On a GPU the base records the step once as a CUDA graph and replays it for every
        batch, so it must not wait for the device (no .item() or float() of a tensor, no
        branch on a tensor's value, no boolean-mask indexing), must read its batch only
        through `index`, and must build its tensors on the batch's device. The contract
        suite checks the first of these on the CPU."""

    @abc.abstractmethod
    def evaluate(
        self, model: ModelT, dataset: Dataset, config: ConfigT, ctx: EvalContext
    ) -> Metrics:
        """The metrics `reported_metrics(config)`, as Python floats, on the held-out
        subsets `ctx` fixes. NaN where a value is undefined (codes that are not finite)."""

    def make_optimizers(self, model: ModelT, config: ConfigT) -> dict[str, torch.optim.Optimizer]:
        return {"model": adam(model.parameters(), lr=config.lr)}

    def batches(
        self, dataset: Dataset, config: ConfigT, generator: torch.Generator
    ) -> Iterable[torch.Tensor]:
        """One epoch's batches, as index tensors into the training split."""
        return shuffled_batches(len(dataset.x_train), config.batch_size, generator, dataset.device)

    def check_data(self, config: ConfigT, dataset: Dataset) -> None:
        """Raise DataError, naming the dataset and the fix, when `config` cannot train on
        `dataset` (the ML-VAE's groups need classes at least as large). The planner calls
        it on each end of a search space before a study starts; `build` calls it too."""

    def reported_metrics(self, config: ConfigT) -> tuple[str, ...]:
        """The metrics evaluate() returns for `config`: all the declared ones, unless the
        family's evaluate() reports some only under some settings."""
        return self.metric_names

    # --- what the base derives -----------------------------------------------------------
    def make_config(self, values: Mapping[str, Any] | None = None) -> ConfigT:
        return self.config_cls.from_dict(dict(values or {}))

    def build(self, config: ConfigT, dataset: Dataset) -> ModelT:
        self.check_data(config, dataset)
        model = self.make_model(config, dataset)
        if not isinstance(model, FamilyModel):
            raise ContractError(
                f"{self.name}: make_model() returned a {type(model).__name__}; the model must "
                "subclass trainables.family.FamilyModel"
            )
        return model

    def train_epoch(
        self, training: Training[ConfigT, ModelT], generators: list[torch.Generator]
    ) -> list[Metrics]:
        """Train one epoch: every batch through `step` (a graph replay inside
        `cuda_graphs.replaying`), each replica's batches drawn from its own generator.
        Returns each replica's loss terms, averaged over the epoch."""
        training.model.train()
        if len(generators) == 1:
            batches = self.batches(training.dataset, training.config, generators[0])
        else:
            per_replica = [self.batches(training.dataset, training.config, g) for g in generators]
            batches = (torch.stack(index) for index in zip(*per_replica, strict=True))

        def step(index: torch.Tensor) -> Terms:
            training.noise.begin_step()
            return self.step(training, index)

        return run_batches(batches, step, len(generators))

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(metric.name for metric in self.metrics)

    @property
    def default_objectives(self) -> tuple[str, ...]:
        """ "metric:max|min" for each declared objective."""
        return tuple(f"{name}:{self._declared[name].goal}" for name in self.objectives)

    @property
    def image_grids(self) -> dict[str, MakeGrid]:
        """Grid name -> function(model, dataset, config, ctx) returning the grid (or None)."""
        return {grid.name: grid.make for grid in self.grids}

    def metric(self, name: str) -> Metric:
        """The declaration of `name`, one of this family's metrics or of those every
        experiment adds (diverged, train_seconds, eval_seconds)."""
        for metric in (*self.metrics, *RUN_METRICS):
            if metric.name == name:
                return metric
        raise KeyError(f"{self.name}: no metric {name!r}; declared: {', '.join(self.metric_names)}")

    def metric_range(self, name: str) -> tuple[float, float | None]:
        return self.metric(name).range

    @property
    def metric_ranges(self) -> dict[str, tuple[float, float | None]]:
        """Each declared metric's range, by name (what seed intervals are clipped to)."""
        return {name: self.metric_range(name) for name in self.metric_names}

    def check_metrics(self, metrics: Mapping[str, float]) -> None:
        """Raise ContractError unless every value is a float of a declared metric and lies
        in its declared range: either would be a bug in the family, not in its input."""
        for name, value in metrics.items():
            metric = self._declared.get(name)
            if metric is None:
                raise ContractError(
                    f"{self.name}: evaluate() returned {name!r}, which "
                    f"{type(self).__name__}.metrics does not declare"
                )
            if not isinstance(value, float):
                raise ContractError(
                    f"{self.name}: evaluate() returned {name}={value!r} "
                    f"({type(value).__name__}); metrics are Python floats"
                )
            if not metric.admits(value):
                low, high = metric.range
                raise ContractError(
                    f"{self.name}: evaluate() returned {name}={value!r}, outside its declared "
                    f"range [{low}, {'inf' if high is None else high}]"
                )

    def _check_declarations(self) -> None:
        owner = type(self).__name__
        missing = [attribute for attribute in self._REQUIRED if not hasattr(self, attribute)]
        if missing:
            raise ContractError(f"{owner}: declare the class attribute(s) {', '.join(missing)}")
        if not (isinstance(self.config_cls, type) and issubclass(self.config_cls, FamilyConfig)):
            raise ContractError(f"{owner}.config_cls must be a subclass of FamilyConfig")
        names = [metric.name for metric in self.metrics]
        _no_repeats(owner, "metric", names)
        added = set(names) & {metric.name for metric in RUN_METRICS}
        if added:
            raise ContractError(f"{owner}: Experiment reports {sorted(added)} itself; drop them")
        declared = {metric.name: metric for metric in self.metrics}
        for objective in self.objectives:
            if objective not in declared or declared[objective].goal is None:
                raise ContractError(
                    f"{owner}: objective {objective!r} must name a declared metric with a goal"
                )
        _no_repeats(owner, "grid", [grid.name for grid in self.grids])
        for values in (*self.test_variants, self.reference_config):
            try:
                self.make_config(values)
            except ConfigError as error:
                raise ContractError(
                    f"{owner}: {dict(values)} is not a valid config ({error})"
                ) from None


def _no_repeats(owner: str, what: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ContractError(f"{owner}: {what}(s) {', '.join(repeated)} declared twice")


def run_batches(
    batches: Iterable[torch.Tensor], step: Callable[[torch.Tensor], Terms], replicas: int = 1
) -> list[Metrics]:
    """Run `step(batch_index)` over an epoch and average the terms it returns, per replica
    (a solo step's terms are scalars; S replicas' have S values).

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
    means = {
        key: (value.double() / max(n, 1)).reshape(-1).tolist() for key, value in totals.items()
    }
    return [{key: values[k] for key, values in means.items()} for k in range(replicas)]


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One update from `loss`: a scalar, or one per replica. Replicas' losses are summed:
    their parameters are disjoint, so each replica's gradient is its own loss's."""
    optimizer.zero_grad(set_to_none=True)
    # Autocast (a bf16 run) covers the forward pass only: backward ops take the dtypes
    # the forward chose, and the update must run in the parameters' float32.
    with torch.autocast(loss.device.type, enabled=False):
        loss.sum().backward()
        optimizer.step()


def adam(params: Iterable[nn.Parameter], lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel: one kernel updates every parameter, where the default
    runs several ops per parameter tensor per step. On a GPU these small models are
    launch-bound; on the CPU it made a step 2-13% faster (reference sizes, 2 cores; the
    AAE, with three optimisers, gains most). On CUDA `capturable` keeps the step count on
    the device, so the step can be a CUDA graph."""
    params = list(params)
    cuda = params[0].is_cuda
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, capturable=cuda)


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


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """By comparison, not F.one_hot: that one reads the labels' range on the host (CPU),
    which neither vmap over replicas nor a CUDA graph allows."""
    classes = torch.arange(n_classes, device=labels.device)
    return (labels.unsqueeze(-1) == classes).float()


# --- architectures -----------------------------------------------------------------------
# arch="conv" is the convolutional network of Locatello et al. (ICML 2019, Table 2 of the
# appendix; Higgins et al.'s for 64x64 images): four 4x4 convolutions of stride 2 with
# 32, 32, 64 and 64 channels, ReLU, a dense layer of 256, then the output layer; the
# decoder mirrors it. (disentanglement_lib's conv_encoder, and the models it released, use
# 2x2 kernels in the third and fourth convolutions, unlike the paper: its issue 23. This
# follows the paper.)
CONV_CHANNELS = (32, 32, 64, 64)
CONV_KERNEL = 4
CONV_DENSE = 256
# Four stride-2 convolutions divide each side by 16: images are padded to a multiple of it.
CONV_SIDE_MULTIPLE = 2 ** len(CONV_CHANNELS)


def encoder(
    image_shape: Sequence[int], hidden: Sequence[int], arch: str, out_dim: int | None
) -> nn.Module:
    """A network from flattened images (N, C*H*W) to (N, out_dim), of architecture `arch`:
    "mlp", fully connected layers of the widths `hidden`, or "conv" (Locatello et al.'s,
    which ignores `hidden`). With `out_dim` None it stops after its last hidden layer and
    that layer's ReLU: a trunk `encoder_width(hidden, arch)` wide for heads to read."""
    _check_arch(arch)
    if arch == "conv":
        return ConvEncoder(tuple(image_shape), out_dim)
    sizes = [math.prod(image_shape), *hidden]
    if out_dim is None:
        return mlp(sizes, final_activation=nn.ReLU())
    return mlp([*sizes, out_dim])


def encoder_width(hidden: Sequence[int], arch: str) -> int:
    """The width of `encoder(..., out_dim=None)`'s output."""
    _check_arch(arch)
    return CONV_DENSE if arch == "conv" else hidden[-1]


def decoder(in_dim: int, hidden: Sequence[int], arch: str, image_shape: Sequence[int]) -> nn.Module:
    """The mirror of `encoder`: from codes (N, in_dim) to the logits of flattened images
    (N, C*H*W). `hidden` are the encoder's widths, which the "mlp" decoder runs in reverse;
    "conv" ignores them."""
    _check_arch(arch)
    if arch == "conv":
        return ConvDecoder(in_dim, tuple(image_shape))
    return mlp([in_dim, *reversed(hidden), math.prod(image_shape)])


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"arch: {arch!r} is not a valid choice; choose one of {', '.join(ARCHS)}")


def _padding(side: int) -> tuple[int, int]:
    """Zeros (before, after) that take `side` to the next multiple of CONV_SIDE_MULTIPLE
    (at least one): the convolutions' map is then whole, and a 64x64 image's is 4x4 as in
    the paper. Split evenly, so the image sits in the middle of the padded one."""
    padded = max(1, math.ceil(side / CONV_SIDE_MULTIPLE)) * CONV_SIDE_MULTIPLE
    before = (padded - side) // 2
    return before, padded - side - before


def _conv_map(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The shape of the last convolution's feature map (channels, height, width)."""
    _, height, width = image_shape
    sides = [(sum(_padding(n)) + n) // CONV_SIDE_MULTIPLE for n in (height, width)]
    return (CONV_CHANNELS[-1], *sides)


class ConvEncoder(nn.Module):
    """Locatello et al.'s encoder on flattened images of any shape (see `encoder`)."""

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int | None):
        super().__init__()
        self.image_shape = image_shape
        (top, bottom), (left, right) = (_padding(n) for n in image_shape[1:])
        self.pad = (left, right, top, bottom)  # F.pad's order: last dimension first
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for width in CONV_CHANNELS:
            # Padding 1 halves an even side exactly, as TensorFlow's "same" does.
            layers += [nn.Conv2d(channels, width, CONV_KERNEL, stride=2, padding=1), nn.ReLU()]
            channels = width
        layers += [nn.Flatten(), nn.Linear(math.prod(_conv_map(image_shape)), CONV_DENSE)]
        layers.append(nn.ReLU())
        if out_dim is not None:
            layers.append(nn.Linear(CONV_DENSE, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.unflatten(-1, self.image_shape)
        return self.layers(F.pad(images, self.pad))


class ConvDecoder(nn.Module):
    """Locatello et al.'s decoder, cropped to the image (see `decoder`)."""

    def __init__(self, in_dim: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = image_shape
        self.top, self.left = (_padding(n)[0] for n in image_shape[1:])
        grid = _conv_map(image_shape)
        layers: list[nn.Module] = [
            nn.Linear(in_dim, CONV_DENSE),
            nn.ReLU(),
            nn.Linear(CONV_DENSE, math.prod(grid)),
            nn.ReLU(),
            nn.Unflatten(1, grid),
        ]
        widths = [*reversed(CONV_CHANNELS[:-1]), image_shape[0]]  # 64, 32, 32, C
        channels = grid[0]
        for i, width in enumerate(widths):
            layers.append(nn.ConvTranspose2d(channels, width, CONV_KERNEL, stride=2, padding=1))
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
            channels = width
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, height, width = self.image_shape
        padded = self.layers(z)
        image = padded[..., self.top : self.top + height, self.left : self.left + width]
        return image.flatten(-3)
