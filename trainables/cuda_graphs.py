"""A family's training step recorded once as a CUDA graph and replayed for every batch.

These models are small: on a GPU one step is many kernels of a few microseconds each,
and Python and the launches, not the GPU, set the pace (an H200 ran a 1-GFLOP ML-VAE step
in 3.8 ms; its matmuls alone take 0.24 ms). A graph replays the whole step (gathering
the batch, forward, backward, the optimisers' updates) with one launch.

A step can be captured when it has no host synchronisation and no data-dependent Python
control flow, and reads its batch only through the index tensor it is given (the
families' steps do; a family whose step does not sets `Family.cuda_graphs = False`).
The optimisers must be `capturable` (see `family.adam`). `forbid_host_syncs` finds the
synchronisations on a CPU, so a CI machine without a GPU catches a step that would break
capture.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.errors import ContractError

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graphs require

_active: contextvars.ContextVar[StepGraph | None] = contextvars.ContextVar(
    "step_graph", default=None
)


class StepGraph:
    """One experiment's captured step. Captured on first use; invalid once the model's or
    the optimisers' tensors are replaced (Experiment then makes a new one)."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        state: list[torch.Tensor] = (),
    ):
        self.model = model
        self.optimizers = list(optimizers.values())
        # Other tensors the step updates in place (the noise stream's step counter).
        self.state = list(state)
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
        saved_extra = [t.clone() for t in self.state]
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
            for tensor, saved in zip(self.state, saved_extra, strict=True):
                tensor.copy_(saved)
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


aten = torch.ops.aten
# Ops after which the host must wait for the device: they return a Python value read from
# a tensor, or a tensor whose size depends on tensor values.
HOST_SYNC_OPS = {
    aten._local_scalar_dense: "reads a tensor's value on the host (.item(), float(), int(), "
    "bool() of a tensor, or a Python branch on one)",
    aten.is_nonzero: "reads a tensor's truth value on the host",
    aten.equal: "compares two tensors into a Python bool",
    aten.nonzero: "has an output size that depends on tensor values",
    aten.masked_select: "has an output size that depends on tensor values",
    aten._unique: "has an output size that depends on tensor values",
    aten._unique2: "has an output size that depends on tensor values",
    aten.unique_dim: "has an output size that depends on tensor values",
    aten.unique_consecutive: "has an output size that depends on tensor values",
    aten.unique_dim_consecutive: "has an output size that depends on tensor values",
    aten.bincount: "has an output size that depends on tensor values",
    aten.lift_fresh: "builds a tensor from Python data (a host-to-device copy every step)",
}
MASK_INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def host_sync(func, args, kwargs) -> str | None:
    """Why `func` on these arguments makes the host wait for the device, or None."""
    packet = func.overloadpacket
    if packet in HOST_SYNC_OPS:
        return HOST_SYNC_OPS[packet]
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "has an output size that depends on tensor values (pass output_size)"
    if packet in MASK_INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "indexes with a boolean mask (an output size from tensor values)"
    return None


class _OneHotCalls(TorchFunctionMode):
    """How many `F.one_hot` calls are in progress (see `_HostSyncs`)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        inside = func is torch.nn.functional.one_hot
        self.depth += inside
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.depth -= inside


class _HostSyncs(TorchDispatchMode):
    """Raises ContractError at the first op (forward or backward) that syncs with the host.

    One exemption: on every device but CUDA, `F.one_hot` checks that its labels lie in
    [0, n_classes) by reading their min and max with .item(); on CUDA it checks with a
    device-side assert instead and does not sync (ATen's one_hot). So its reads are
    allowed, and only inside one_hot."""

    def __init__(self, one_hot: _OneHotCalls) -> None:
        super().__init__()
        self.one_hot = one_hot

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = host_sync(func, args, kwargs)
        one_hot_check = self.one_hot.depth and func.overloadpacket is aten._local_scalar_dense
        if why is not None and not one_hot_check:
            raise ContractError(
                f"{func} {why}: a CUDA graph cannot capture it; keep the value on the device"
            )
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid_host_syncs() -> Iterator[None]:
    """Within this block, an op that would make a captured step wait for the device raises
    ContractError. It cannot see copies between devices (on a CPU there are none)."""
    one_hot = _OneHotCalls()
    with one_hot, _HostSyncs(one_hot):
        yield
