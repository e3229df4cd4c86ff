"""One config of one family on one dataset, trained from one seed or from S seeds at once:
the unit that `study train` and a Ray trial run.

With S seeds the S models are replicas (trainables.replicas): stacked, trained by one
batched step, each with its own initialisation, data order and noise, so replica k is
the solo run with seed k. It knows nothing of Ray or MLflow: it trains an epoch,
evaluates each replica, and saves or restores its whole state (weights, optimisers,
epoch, generators, noise) so a trial can resume exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from trainables.batching import run_replicas
from trainables.config import check_precision, check_seeds
from trainables.cuda_graphs import StepGraph, replaying
from trainables.data import Dataset
from trainables.errors import ConfigError
from trainables.factor_metrics import (
    EVALUATION_SIZES,
    FACTOR_METRIC_NAMES,
    QUICK_SIZES,
    factor_metrics,
)
from trainables.family import Family, FamilyConfig, Training
from trainables.metrics import EvalContext
from trainables.noise import NoiseStream
from trainables.registry import get_family
from trainables.replicas import Replicas

STATE_FILE = "state.pt"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class Experiment:
    """A family's model (or S stacked replicas of it) with its optimisers, generators and
    progress. Make one with `create`, which seeds and builds the parts; the dataset is
    fixed for its life (a captured CUDA-graph step reads its tensors)."""

    family: Family
    config: FamilyConfig
    dataset: Dataset
    # The model the optimisers update: the plain model, or the replicas' stacked one.
    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    generators: list[torch.Generator]  # each replica's batch order
    noise: NoiseStream  # each replica's training noise
    eval_context: EvalContext
    seeds: tuple[int, ...] = (0,)
    replicas: Replicas | None = None  # None for one seed
    precision: str = "fp32"
    # On CUDA, replay each training step as a CUDA graph (see cuda_graphs.py).
    cuda_graphs: bool = True
    epoch: int = 0
    replica_diverged: list[bool] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    # The latest evaluation, one dict per replica.
    last_replica_metrics: list[dict[str, float]] = field(default_factory=list)
    _quick_context: EvalContext | None = field(default=None, init=False, repr=False)
    _step_graph: StepGraph | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(
        cls,
        family: str | Family,
        config: dict[str, Any] | FamilyConfig,
        dataset: Dataset,
        seed: int = 0,
        use_reference: bool = True,
        precision: str = "fp32",
        cuda_graphs: bool = True,
        seeds: int = 1,
    ) -> Experiment:
        """Build `family`'s model for `config` on `dataset`: one from `seed`, or with
        `seeds` = S > 1, S replicas from seeds seed, seed + 1, ..., seed + S - 1.
        `use_reference=False` leaves out the metrics that need the reference classifier."""
        check_precision(precision)
        check_seeds(seeds)
        family = get_family(family) if isinstance(family, str) else family
        if not isinstance(config, FamilyConfig):
            config = family.make_config(config)
        replica_seeds = tuple(range(seed, seed + seeds))
        models = []
        for replica_seed in replica_seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(replica_seed)
                models.append(family.build(config, dataset).to(dataset.device))
        replicas = Replicas(models) if seeds > 1 else None
        model = replicas.stacked if replicas is not None else models[0]
        return cls(
            family,
            config,
            dataset,
            model,
            family.make_optimizers(model, config),
            [torch.Generator().manual_seed(s) for s in replica_seeds],
            NoiseStream.for_seeds(list(replica_seeds), dataset.device),
            EvalContext(dataset, seed=0, use_reference=use_reference),
            seeds=replica_seeds,
            replicas=replicas,
            precision=precision,
            cuda_graphs=cuda_graphs,
            replica_diverged=[False] * seeds,
        )

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def generator(self) -> torch.Generator:
        """The first replica's batch generator (a solo run's only one)."""
        return self.generators[0]

    @property
    def diverged(self) -> bool:
        """Every replica has diverged: training has nothing left to do."""
        return all(self.replica_diverged)

    @property
    def last_metrics(self) -> dict[str, float]:
        """A solo run's latest evaluation."""
        return self._solo(self.last_replica_metrics) if self.last_replica_metrics else {}

    def models(self) -> list[torch.nn.Module]:
        """One plain model per replica (views of the stacked weights, never copies)."""
        if self.replicas is None:
            return [self.model]
        return [self.replicas.replica(k) for k in range(len(self.seeds))]

    def training(self) -> Training:
        """What the family's step works on (see Family.step)."""
        return Training(
            self.model, self.optimizers, self.dataset, self.config, self.noise, self.replicas
        )

    def _solo(self, per_replica: list[dict[str, float]]) -> dict[str, float]:
        if len(per_replica) != 1:
            raise ValueError(
                f"this experiment trains {len(per_replica)} seed replicas; use the "
                "*_replicas methods, which return one result per replica"
            )
        return per_replica[0]

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch of a solo run (see train_replicas)."""
        return self._solo(self.train_replicas())

    def train_replicas(self) -> list[dict[str, float]]:
        """Train one epoch; each replica's mean loss terms. A non-finite loss or weight
        marks that replica diverged instead of raising."""
        start = time.perf_counter()
        # No cast cache: it lives until the autocast region exits, so over a whole epoch
        # every step after the first would run on the first step's bf16 weights.
        with (
            torch.autocast(
                self.dataset.device.type,
                dtype=torch.bfloat16,
                enabled=self.precision == "bf16",
                cache_enabled=False,
            ),
            replaying(self._graph()),
        ):
            losses = self.family.train_epoch(self.training(), self.generators)
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        finite_weights = self._weights_finite()
        for k, replica_losses in enumerate(losses):
            finite = all(math.isfinite(v) for v in replica_losses.values())
            if not (finite and finite_weights[k]):
                self.replica_diverged[k] = True
        return [{f"train_{key}": v for key, v in terms.items()} for terms in losses]

    def _graph(self) -> StepGraph | None:
        if not (
            self.cuda_graphs and self.family.cuda_graphs and self.dataset.device.type == "cuda"
        ):
            return None
        if self._step_graph is None:
            self._step_graph = StepGraph(self.model, self.optimizers, self.noise.tensors())
        return self._step_graph

    def _rng_isolated(self):
        """Evaluation must not move any RNG stream, or a run's results could depend on
        how often it is evaluated (`--eval-every`, `study train` vs a trial)."""
        devices = [self.dataset.device.index or 0] if self.dataset.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def evaluate(self, quick: bool = False) -> dict[str, float]:
        """A solo run's metrics (see evaluate_replicas)."""
        return self._solo(self.evaluate_replicas(quick))

    def evaluate_replicas(self, quick: bool = False) -> list[dict[str, float]]:
        """Each replica's metrics on held-out data, "diverged" among them. `quick` (for
        intermediate epochs) uses smaller subsets and the linear probe only; see
        metrics.EvalContext.quick."""
        start = time.perf_counter()
        if quick and self._quick_context is None:
            self._quick_context = self.eval_context.quick()
        context = self._quick_context if quick else self.eval_context
        with self._rng_isolated():
            finite = self._weights_finite()
            # Each replica's evaluation as the family writes it; their probe fits and
            # classifier readings run once for all replicas (trainables.batching).
            found = run_replicas(
                [
                    partial(self._evaluate_one, model, k, context, finite[k])
                    for k, model in enumerate(self.models())
                ]
            )
        self.eval_seconds += time.perf_counter() - start
        self.last_replica_metrics = found
        return found

    def _evaluate_one(
        self, model, k: int, context: EvalContext, weights_finite: bool
    ) -> dict[str, float]:
        if not weights_finite:
            self.replica_diverged[k] = True
        if self.replica_diverged[k]:
            metrics = {name: float("nan") for name in self.family.metric_names}
            if context.factor_pool is not None:
                metrics.update(dict.fromkeys(FACTOR_METRIC_NAMES, float("nan")))
        else:
            # NaN here is a metric this evaluation cannot take (the swap metrics without
            # the reference classifier), not a divergence: that is the weights' to say.
            metrics = self.family.evaluate(model, self.dataset, self.config, context)
            # An undeclared name or a value outside its declared range is a bug in the
            # family: raise rather than log (or silently drop) it.
            self.family.check_metrics(metrics)
            metrics.update(factor_scores(model, context))
        metrics["diverged"] = float(self.replica_diverged[k])
        return metrics

    def image_grids(self) -> dict[str, torch.Tensor]:
        """The first replica's image grids that it can draw (none once it diverged)."""
        if self.replica_diverged[0]:
            return {}
        model = self.models()[0]
        with self._rng_isolated():
            images = {
                name: make(model, self.dataset, self.config, self.eval_context)
                for name, make in self.family.image_grids.items()
            }
        # A family may have nothing to show for some configs (the AAE's manifold of a wide code).
        return {name: image.cpu() for name, image in images.items() if image is not None}

    def _weights_finite(self) -> list[bool]:
        if self.replicas is not None:
            return self.replicas.finite()
        return [all(bool(torch.isfinite(p).all()) for p in self.model.parameters())]

    # --- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "family": self.family.name,
            "config": self.config.to_dict(),
            "dataset": self.dataset.name,
            "seeds": list(self.seeds),
            "precision": self.precision,
            "epoch": self.epoch,
            "replica_diverged": list(self.replica_diverged),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "last_replica_metrics": self.last_replica_metrics,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generators": [g.get_state() for g in self.generators],
            "noise": self.noise.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "seeds" not in state:
            raise ConfigError(
                "state: written by a version from before seed replicas, whose random "
                "streams this one cannot continue; train it again (start a new study)"
            )
        if list(state["seeds"]) != list(self.seeds):
            raise ConfigError(
                f"seeds: the saved state holds seeds {state['seeds']}, this experiment "
                f"{list(self.seeds)}; resume with the seed and --seeds it was started with"
            )
        # Loading replaces the optimisers' state tensors, which a captured step reads.
        self._step_graph = None
        self.model.load_state_dict(state["model"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        self.noise.load_state_dict(state["noise"])
        self.epoch = state["epoch"]
        self.replica_diverged = list(state["replica_diverged"])
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state["eval_seconds"]
        self.last_replica_metrics = state["last_replica_metrics"]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def restore(self, directory: str | Path) -> None:
        # Load onto the CPU: generator states must stay CPU byte tensors, and
        # load_state_dict moves weights and optimiser state onto the model's device itself.
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
        self.load_state_dict(state)


@torch.no_grad()
def factor_scores(model: torch.nn.Module, context: EvalContext) -> dict[str, float]:
    """The disentanglement metrics of `model`'s representation (every code it has, side
    by side: an ML-VAE's style and class codes together) on the context's pool of
    held-out images, where the dataset has ground-truth factors; nothing elsewhere."""
    pool = context.factor_pool
    if pool is None:
        return {}
    x, labels, factors = pool
    model.eval()
    codes = torch.cat(list(model.latent_codes(x, labels).values()), dim=1).float()
    sizes = QUICK_SIZES if context.quick_factors else EVALUATION_SIZES
    return factor_metrics(codes, factors, sizes, seed=context.seed)
