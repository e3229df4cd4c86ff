"""A family's training step recorded once as a CUDA graph and replayed for every batch.

These models are small: on a GPU one step is many kernels of a few microseconds each,
and Python and the launches, not the GPU, set the pace (an H200 ran a 1-GFLOP ML-VAE step
in 3.8 ms; its matmuls alone take 0.24 ms). A graph replays the whole step (gathering
the batch, forward, backward, the optimisers' updates) with one launch.

A step can be captured when it has no host synchronisation and no data-dependent Python
control flow, and reads its batch only through the index tensor it is given (the
families' steps do; a family whose step does not sets `Family.cuda_graphs = False`).
The optimisers must be `capturable` (see `family.adam`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graphs require

_active: contextvars.ContextVar[StepGraph | None] = contextvars.ContextVar(
    "step_graph", default=None
)


class StepGraph:
    """One experiment's captured step. Captured on first use; invalid once the model's,
    optimisers' or dataset's tensors are replaced (Experiment then makes a new one)."""

    def __init__(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], dataset):
        self.model = model
        self.dataset = dataset  # whose tensors the captured step reads
        self.optimizers = list(optimizers.values())
        self.graph: torch.cuda.CUDAGraph | None = None
        self.index: torch.Tensor | None = None  # the captured step reads its batch here
        self.outputs: dict[str, torch.Tensor] = {}

    def run(self, step: Step, index: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is None:
            self._capture(step, index)
        if index.shape != self.index.shape:
            return step(index)  # a batch of another size: eagerly (the same tensors)
        self.index.copy_(index)
        self.graph.replay()
        return self.outputs

    def _capture(self, step: Step, index: torch.Tensor) -> None:
        # The warm-up steps are real updates: undo them in place, so the captured addresses
        # stay the ones training uses, and training starts from where it was.
        params = list(self.model.parameters())
        saved_params = [p.detach().clone() for p in params]
        saved_state = {k: v.clone() for k, v in _optimizer_tensors(self.optimizers).items()}
        saved_rng = torch.cuda.get_rng_state(index.device)
        side = torch.cuda.Stream(index.device)
        side.wait_stream(torch.cuda.current_stream(index.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(index)
        torch.cuda.current_stream(index.device).wait_stream(side)
        with torch.no_grad():
            for param, saved in zip(params, saved_params, strict=True):
                param.copy_(saved)
            for key, tensor in _optimizer_tensors(self.optimizers).items():
                if key in saved_state:
                    tensor.copy_(saved_state[key])
                else:  # created by the warm-up (Adam's first step): Adam starts it at zero
                    tensor.zero_()
        torch.cuda.set_rng_state(saved_rng, index.device)
        self.index = index.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(self.index)


def _optimizer_tensors(optimizers: list[torch.optim.Optimizer]) -> dict[tuple, torch.Tensor]:
    """Every state tensor of the optimisers, keyed by (optimiser, parameter, name)."""
    found = {}
    for i, optimizer in enumerate(optimizers):
        for param, state in optimizer.state.items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    found[(i, id(param), name)] = value
    return found


@contextlib.contextmanager
def replaying(graph: StepGraph | None) -> Iterator[None]:
    """Within this block `family.run_batches` runs its steps through `graph` (if any)."""
    token = _active.set(graph)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> StepGraph | None:
    return _active.get()
