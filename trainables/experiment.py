"""One model of one family on one dataset: the unit that `study train` and a Ray trial run.

It knows nothing of Ray or MLflow: it trains an epoch, evaluates, and saves or restores its
whole state (weights, optimisers, epoch, RNG) so a trial can resume exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.config import check_precision
from trainables.cuda_graphs import StepGraph, replaying
from trainables.data import Dataset
from trainables.family import Family, FamilyConfig
from trainables.metrics import EvalContext
from trainables.registry import get_family

STATE_FILE = "state.pt"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class Experiment:
    """A family's model with its optimisers, RNG and progress. Make one with `create`, which
    seeds and builds the parts; the dataset is fixed for its life (a captured CUDA-graph
    step reads its tensors)."""

    family: Family
    config: FamilyConfig
    dataset: Dataset
    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator  # batches' order and the AAE's CPU prior samples
    eval_context: EvalContext
    seed: int = 0
    precision: str = "fp32"
    # On CUDA, replay each training step as a CUDA graph (see cuda_graphs.py).
    cuda_graphs: bool = True
    epoch: int = 0
    diverged: bool = False
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    last_metrics: dict[str, float] = field(default_factory=dict)
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
    ) -> Experiment:
        """Build `family`'s model for `config` on `dataset` with weights drawn from `seed`.
        `use_reference=False` leaves out the metrics that need the reference classifier."""
        check_precision(precision)
        family = get_family(family) if isinstance(family, str) else family
        if not isinstance(config, FamilyConfig):
            config = family.make_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = family.build(config, dataset).to(dataset.device)
        optimizers = family.make_optimizers(model, config)
        # Reparameterisation noise comes from torch's global RNG; seed it once here and
        # save/restore it with the state so a resumed run continues the same stream.
        torch.manual_seed(seed + 1)
        return cls(
            family,
            config,
            dataset,
            model,
            optimizers,
            torch.Generator().manual_seed(seed),
            EvalContext(dataset, seed=0, use_reference=use_reference),
            seed=seed,
            precision=precision,
            cuda_graphs=cuda_graphs,
        )

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch; a non-finite loss marks the run diverged instead of raising."""
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
            losses = self.family.train_epoch(
                self.model, self.optimizers, self.dataset, self.config, self.generator
            )
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        if not all(math.isfinite(v) for v in losses.values()) or not self._weights_finite():
            self.diverged = True
        return {f"train_{k}": v for k, v in losses.items()}

    def _graph(self) -> StepGraph | None:
        if not (
            self.cuda_graphs and self.family.cuda_graphs and self.dataset.device.type == "cuda"
        ):
            return None
        if self._step_graph is None:
            self._step_graph = StepGraph(self.model, self.optimizers)
        return self._step_graph

    def _rng_isolated(self):
        """Evaluation must not move the training RNG stream, or a run's results would
        depend on how often it is evaluated (`--eval-every`, `study train` vs a trial)."""
        devices = [self.dataset.device.index or 0] if self.dataset.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def evaluate(self, quick: bool = False) -> dict[str, float]:
        """The family's metrics on held-out data. `quick` (for intermediate epochs) uses
        smaller subsets and the linear probe only; see metrics.EvalContext.quick."""
        with self._rng_isolated():
            return self._evaluate(quick)

    def _evaluate(self, quick: bool) -> dict[str, float]:
        start = time.perf_counter()
        if self.diverged:
            metrics = {name: float("nan") for name in self.family.metric_names}
        else:
            if quick and self._quick_context is None:
                self._quick_context = self.eval_context.quick()
            context = self._quick_context if quick else self.eval_context
            metrics = self.family.evaluate(self.model, self.dataset, self.config, context)
            # An undeclared name or a value outside its declared range is a bug in the
            # family: raise rather than log (or silently drop) it.
            self.family.check_metrics(metrics)
            if not all(math.isfinite(v) for v in metrics.values()):
                self.diverged = True
        metrics["diverged"] = float(self.diverged)
        self.eval_seconds += time.perf_counter() - start
        self.last_metrics = metrics
        return metrics

    def image_grids(self) -> dict[str, torch.Tensor]:
        if self.diverged:
            return {}
        with self._rng_isolated():
            images = {
                name: make(self.model, self.dataset, self.config, self.eval_context)
                for name, make in self.family.image_grids.items()
            }
        # A family may have nothing to show for some configs (the AAE's manifold of a wide code).
        return {name: image.cpu() for name, image in images.items() if image is not None}

    def _weights_finite(self) -> bool:
        return all(torch.isfinite(p).all() for p in self.model.parameters())

    # --- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "family": self.family.name,
            "config": self.config.to_dict(),
            "dataset": self.dataset.name,
            "seed": self.seed,
            "precision": self.precision,
            "epoch": self.epoch,
            "diverged": self.diverged,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "last_metrics": self.last_metrics,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": np.random.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Loading replaces the optimisers' state tensors, which a captured step reads.
        self._step_graph = None
        self.model.load_state_dict(state["model"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(state["numpy_rng"])
        self.epoch = state["epoch"]
        self.diverged = state["diverged"]
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state["eval_seconds"]
        self.last_metrics = state["last_metrics"]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def restore(self, directory: str | Path) -> None:
        # Load onto the CPU: RNG states must stay CPU byte tensors, and load_state_dict moves
        # weights and optimiser state onto the model's device itself.
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
        self.load_state_dict(state)
