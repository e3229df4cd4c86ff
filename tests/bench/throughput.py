"""Sections a and b: training throughput against a torchvision-style DataLoader loop, and
against the hardware limit (the step's matmuls as bare `torch.mm` calls, and its
convolutions as bare aten calls).

Ours is `Experiment.train_epoch` on a training split that holds exactly `steps` batches,
timed as whole epochs (so its per-epoch work counts too). The plain loop trains the same
model with the family's own step, fed by a `DataLoader` the way the reference
implementations feed theirs: a map-style dataset that builds a PIL image from a uint8
array and applies `ToTensor` per sample, batches of 256 in the family's own order
(shuffled; same-label groups for ML-VAE), default collate, no workers.

Each family runs at its reference's MLP sizes (batch 256), and with `arch=conv`, Locatello
et al.'s convolutional networks at their batch of 64, on the MNIST-sized images and on
64x64 one-channel ones (dSprites' size; random pixels: speed does not depend on them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from tests.bench.common import (
    SYNTHETIC_SEED,
    reference_configs,
    spread,
    subset,
    timed,
    uint8_images,
)
from trainables import Dataset, Experiment, get_family
from trainables.family import Family, Training
from trainables.noise import NoiseStream

TARGET_SPEEDUP = 3.0  # ours / DataLoader loop, samples per second
TARGET_HW_RATIO = 1.3  # our step time / bare-mm time of the same matmuls
# The conv rows: Locatello et al.'s batch size, and dSprites' image side.
CONV_BATCH = 64
CONV_SIDE = 64

aten = torch.ops.aten


# --- the reference-style input pipeline ------------------------------------------------
class ImageArrayDataset(TorchDataset):
    """What torchvision.datasets.MNIST does per sample: a PIL image from a uint8 array,
    `ToTensor()` (float in [0, 1], shape 1 x H x W) and an int label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision.transforms import ToTensor

        self.images, self.labels, self.transform = images, labels, ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class FamilyBatchSampler(Sampler[list[int]]):
    """The family's own batch order (shuffled full batches, ML-VAE's same-label groups) as
    lists of indices, which the DataLoader turns into samples one at a time. Drawn on the
    CPU, like a reference implementation's sampler, from its own generator."""

    def __init__(self, family: Family, config, dataset: Dataset, seed: int = 0):
        self.family, self.config, self.dataset = family, config, dataset.to("cpu")
        self.generator = torch.Generator().manual_seed(seed)

    def _epoch(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return iter(self.family.batches(self.dataset, self.config, generator))

    def __iter__(self) -> Iterator[list[int]]:
        for index in self._epoch(self.generator):
            yield index.tolist()

    def __len__(self) -> int:
        return sum(1 for _ in self._epoch(torch.Generator().manual_seed(0)))


def make_loader(family: Family, config, dataset: Dataset, images, labels) -> DataLoader:
    sampler = FamilyBatchSampler(family, config, dataset)
    return DataLoader(ImageArrayDataset(images, labels), batch_sampler=sampler)


def plain_step(family: Family, training: Training) -> Callable[..., dict]:
    """The family's own training step on a batch (x, y) already on the device: the batch
    stands in for the training split, read through an index of all of it."""
    image_shape, n_classes = training.dataset.image_shape, training.dataset.n_classes

    def step(x: torch.Tensor, y: torch.Tensor) -> dict:
        batch = Dataset("batch", x, y, x, y, image_shape, n_classes)
        on_batch = dataclasses.replace(training, dataset=batch)
        training.noise.begin_step()  # as the family's epoch loop does before each step
        return family.step(on_batch, torch.arange(len(x), device=x.device))

    return step


class PlainLoop:
    """The reference way to train: iterate a DataLoader, move each batch, step."""

    def __init__(
        self, family: str, config, dataset: Dataset, images, labels, device, seed: int = 0
    ):
        fam = get_family(family)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = fam.build(config, dataset).to(device)
        self.optimizers = fam.make_optimizers(self.model, config)
        stream = NoiseStream.for_seeds([seed], torch.device(device))
        training = Training(self.model, self.optimizers, dataset, config, stream)
        self.step = plain_step(fam, training)
        self.loader = make_loader(fam, config, dataset, images, labels)
        self.device = device

    def load_only(self) -> int:
        """One epoch of the input pipeline alone (no training): what data handling costs."""
        n = 0
        for x, y in self.loader:
            x, y = x.view(len(x), -1).to(self.device), y.to(self.device)
            n += 1
        return n

    def epoch(self) -> tuple[dict[str, float], int]:
        self.model.train()
        totals: dict[str, torch.Tensor] = {}
        n = 0
        for x, y in self.loader:
            x, y = x.view(len(x), -1).to(self.device), y.to(self.device)
            for key, value in self.step(x, y).items():
                value = value.detach()
                totals[key] = totals[key] + value if key in totals else value
            n += 1
        return {k: float(v) / max(n, 1) for k, v in totals.items()}, n


# --- ours ------------------------------------------------------------------------------
class StepCounter:
    """Counts optimizer steps (one per batch on the family's first optimizer)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.n = 0
        optimizer.register_step_post_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.n += 1


@dataclass(frozen=True)
class ConvCall:
    """One convolution (forward or backward) as recorded: the op, its arguments with each
    tensor as its shape, and its multiply-adds counted as FLOPs (2 per multiply-add)."""

    func: Any
    args: tuple
    flops: float


def conv_call(func, args, output) -> ConvCall:
    """Each output position of a convolution (each input position of a transposed one)
    multiplies every weight once per image; a backward pass does that once per gradient
    it computes (input, weight; the bias's sum is negligible)."""
    forward = func.overloadpacket is aten.convolution
    x, weight = (args[0], args[1]) if forward else (args[1], args[2])
    transposed = args[6] if forward else args[7]
    grad_output = output if forward else args[0]
    positions = (x if transposed else grad_output).shape
    passes = 1 if forward else sum(args[10][:2])
    flops = 2.0 * weight.numel() * math.prod(positions[:1] + positions[2:]) * passes
    spec = tuple(tuple(a.shape) if torch.is_tensor(a) else a for a in args)
    return ConvCall(func, spec, flops)


class MatmulRecorder(TorchDispatchMode):
    """Records the (M, K, N) of every matrix product run below autograd, backward included,
    and every convolution (aten.convolution and its backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []
        self.convs: list[ConvCall] = []
        self.plain_mm = 0  # aten.mm calls: backward products (a forward Linear is addmm)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.convolution, aten.convolution_backward):
            output = func(*args, **(kwargs or {}))
            self.convs.append(conv_call(func, args, output))
            return output
        if packet is aten.mm:
            a, b = args[0], args[1]
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
            self.plain_mm += 1
        elif packet is aten.addmm:
            a, b = args[1], args[2]
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        elif packet in (aten.bmm, aten.baddbmm):
            a, b = args[-2], args[-1]
            self.shapes += [(a.shape[1], a.shape[2], b.shape[2])] * a.shape[0]
        return func(*args, **(kwargs or {}))


def linear_matmul_shapes(model: torch.nn.Module, batch: int) -> set[tuple[int, int, int]]:
    """Shapes a Linear layer's matmuls can have: forward x W^T, grad_input, grad_weight."""
    shapes = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n_in, n_out = module.in_features, module.out_features
            shapes |= {(batch, n_in, n_out), (batch, n_out, n_in), (n_out, batch, n_in)}
    return shapes


class BareMatmuls:
    """The given matmul shapes as bare torch.mm calls into preallocated outputs."""

    def __init__(self, shapes: list[tuple[int, int, int]], device):
        self.operands = [
            (
                torch.randn(m, k, device=device),
                torch.randn(k, n, device=device),
                torch.empty(m, n, device=device),
            )
            for m, k, n in shapes
        ]
        self.passes(3)  # warm-up

    def passes(self, count: int) -> None:
        for _ in range(count):
            for a, b, out in self.operands:
                torch.mm(a, b, out=out)


class BareConvs:
    """The recorded convolutions as bare aten calls on random tensors of their shapes."""

    def __init__(self, calls: list[ConvCall], device):
        self.calls = [
            (
                call.func,
                [
                    torch.randn(a, device=device) if _is_shape(call, i) else a
                    for i, a in enumerate(call.args)
                ],
            )
            for call in calls
        ]
        self.passes(3)  # warm-up

    def passes(self, count: int) -> None:
        for _ in range(count):
            for func, args in self.calls:
                func(*args)


def _is_shape(call: ConvCall, i: int) -> bool:
    """Whether argument i of `call` stood for a tensor: the first three of either op (the
    forward's bias may be absent; the backward's third is the weight)."""
    return i < 3 and call.args[i] is not None


def flops(shapes: list[tuple[int, int, int]]) -> float:
    return float(sum(2 * m * k * n for m, k, n in shapes))


@dataclass
class Sizes:
    steps: int  # batches per timed epoch
    warm_steps: int
    repeats: int  # timed epochs of each, interleaved; the best counts


FULL = Sizes(steps=60, warm_steps=10, repeats=4)
QUICK = Sizes(steps=8, warm_steps=3, repeats=3)


def bench_family(
    family: str,
    dataset: Dataset,
    device: torch.device,
    sizes: Sizes,
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row: `family` with the config `values` (default: its reference config)."""
    config = get_family(family).make_config(values or reference_configs()[family])
    batch = config.batch_size
    data = subset(dataset, sizes.steps * batch)
    warm = subset(dataset, sizes.warm_steps * batch)
    images, labels = uint8_images(data)

    experiment = Experiment.create(family, config, data, seed=0, use_reference=False)
    # On CUDA ours replays each step as a CUDA graph; the eager step is timed beside it and
    # records the matmuls and counts the steps (a replay runs no Python). bf16 likewise.
    cuda = device.type == "cuda"
    eager = (
        Experiment.create(family, config, data, seed=0, use_reference=False, cuda_graphs=False)
        if cuda
        else experiment
    )
    counter = StepCounter(next(iter(eager.optimizers.values())))
    # A small eager experiment on `warm` for first-call costs and for recording one step's
    # matmuls (the recorder slows it; it is not timed).
    probe = Experiment.create(family, config, warm, seed=0, use_reference=False, cuda_graphs=False)
    probe_steps = StepCounter(next(iter(probe.optimizers.values())))
    bf16 = None
    if cuda:
        bf16 = Experiment.create(
            family, config, data, seed=0, use_reference=False, precision="bf16"
        )
        bf16.train_epoch()
    plain = PlainLoop(family, config, data, images, labels, device)

    # Warm-up (first-call costs, allocator, thread pools; on CUDA the capture of the step).
    probe.train_epoch()
    if cuda:
        experiment.train_epoch()
        eager.train_epoch()
    plain_iter = iter(plain.loader)
    for _ in range(min(sizes.warm_steps, len(plain.loader))):
        x, y = next(plain_iter)
        plain.step(x.view(len(x), -1).to(device), y.to(device))
    del plain_iter
    probe_steps.n = 0
    with MatmulRecorder() as recorder:
        probe.train_epoch()
    warm_steps = probe_steps.n

    # Hardware limit: the Linear layers' matmuls of one step, as bare mm calls.
    per_step = recorder.shapes[: len(recorder.shapes) // max(warm_steps, 1)]
    if not per_step or recorder.shapes != per_step * warm_steps:
        raise RuntimeError(f"{family}: the {warm_steps} recorded steps ran different matmuls")
    convs = recorder.convs[: len(recorder.convs) // max(warm_steps, 1)]
    if recorder.convs != convs * warm_steps:
        raise RuntimeError(f"{family}: the {warm_steps} recorded steps ran different convolutions")
    linear_shapes = linear_matmul_shapes(probe.model, batch)
    linear = [s for s in per_step if s in linear_shapes]
    other = [s for s in per_step if s not in linear_shapes]
    # Backward runs on autograd's own thread on a GPU; the mode must have followed it there.
    backward_seen = recorder.plain_mm > 0
    bare = BareMatmuls(linear, device)
    bare_convs = BareConvs(convs, device)

    def bare_passes(count: int) -> None:
        bare.passes(count)
        bare_convs.passes(count)

    # Timed rounds, interleaved so a busy machine slows all three alike; the best counts.
    ours_times, plain_times, mm_times, load_times, ours_steps, plain_steps = [], [], [], [], 0, 0
    bf16_times, eager_times = [], []
    for _ in range(sizes.repeats):
        counter.n = 0
        if cuda:
            eager_times.append(timed(eager.train_epoch, device)[0])
            bf16_times.append(timed(bf16.train_epoch, device)[0])
        seconds, _ = timed(experiment.train_epoch, device)
        ours_times.append(seconds)
        ours_steps = counter.n
        seconds, (_, plain_steps) = timed(plain.epoch, device)
        plain_times.append(seconds)
        seconds, _ = timed(partial(bare_passes, ours_steps), device)
        mm_times.append(seconds)
        seconds, _ = timed(plain.load_only, device)
        load_times.append(seconds)
    ours_step = min(ours_times) / ours_steps
    plain_step_time = min(plain_times) / plain_steps
    mm_step = min(mm_times) / ours_steps
    load_step = min(load_times) / plain_steps
    if cuda:
        extra = {
            "ours_bf16_step_ms": min(bf16_times) / ours_steps * 1e3,
            "bf16_speedup": min(ours_times) / min(bf16_times),
            "eager_step_ms": min(eager_times) / ours_steps * 1e3,
            "graph_speedup": min(eager_times) / min(ours_times),
        }
    else:
        extra = {}
    compute_flops = flops(linear) + sum(call.flops for call in convs)
    return {
        **extra,
        "device": str(device),
        "arch": config.arch,
        "image_shape": list(dataset.image_shape),
        "batch_size": batch,
        "steps_timed": ours_steps,
        "ours_step_ms": ours_step * 1e3,
        "ours_samples_per_s": batch / ours_step,
        "dataloader_step_ms": plain_step_time * 1e3,
        "dataloader_steps_timed": plain_steps,
        "dataloader_samples_per_s": batch / plain_step_time,
        "speedup": plain_step_time / ours_step,
        # The DataLoader alone, per batch; with it the plain loop's compute is about
        # dataloader_step - loader_only, so the speedup any input pipeline could give is
        # about dataloader_step / (dataloader_step - loader_only).
        "loader_only_ms": load_step * 1e3,
        "speedup_ceiling": plain_step_time / max(plain_step_time - load_step, 1e-9),
        "ours_epoch_seconds_all": ours_times,
        "dataloader_epoch_seconds_all": plain_times,
        "bare_mm_epoch_seconds_all": mm_times,
        "ours_epoch_spread": spread(ours_times),
        "matmuls_per_step": len(linear),
        "matmul_gflop_per_step": flops(linear) / 1e9,
        "other_matmuls_per_step": len(other),
        "other_matmul_gflop_per_step": flops(other) / 1e9,
        "backward_matmuls_captured": backward_seen,
        # Forward and backward convolutions (arch=conv); the bare time runs them beside the
        # matmuls, and the GFLOP figures count both.
        "convs_per_step": len(convs),
        "conv_gflop_per_step": sum(call.flops for call in convs) / 1e9,
        "compute_gflop_per_step": compute_flops / 1e9,
        "bare_mm_step_ms": mm_step * 1e3,
        "bare_mm_gflops": compute_flops / mm_step / 1e9,
        "ours_matmul_gflops": compute_flops / ours_step / 1e9,
        "hw_ratio": ours_step / mm_step,
        "matmul_shapes_per_step": [list(s) for s in linear],
    }


def synthetic_images(side: int, n_train: int, n_test: int = 1000) -> Dataset:
    """Random uint8 greyscale images of side x side with 10 balanced labels."""
    rng = np.random.default_rng(SYNTHETIC_SEED)

    def images(n: int) -> torch.Tensor:
        pixels = rng.integers(0, 256, (n, side * side), dtype=np.uint8)
        return torch.from_numpy(pixels).float() / 255

    def labels(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.permutation(np.arange(n) % 10).astype(np.int64))

    name = f"synthetic-{side}x{side}"
    x_train, y_train, x_test, y_test = (
        images(n_train),
        labels(n_train),
        images(n_test),
        labels(n_test),
    )
    return Dataset(name, x_train, y_train, x_test, y_test, (1, side, side), 10)


def conv_config(family: str) -> dict[str, Any]:
    """The family's reference config with Locatello et al.'s convolutional networks at
    their batch size (its `hidden` widths are then unused)."""
    return {**reference_configs()[family], "arch": "conv", "batch_size": CONV_BATCH}


def run(
    dataset: Dataset, device: torch.device, sizes: Sizes, log=print
) -> dict[str, dict[str, Any]]:
    """One row per family at its reference sizes ("betavae"), then the conv rows on the
    same images ("betavae conv 28x28") and on 64x64 ones ("betavae conv 64x64")."""
    results = {}
    on_device = dataset.to(device)
    large = synthetic_images(CONV_SIDE, sizes.steps * CONV_BATCH, n_test=100).to(device)
    for family in reference_configs():
        log(f"  [{device}] {family}: {sizes.steps} steps x {sizes.repeats} repeats ...")
        results[family] = bench_family(family, on_device, device, sizes)
    for images in (on_device, large):
        side = "x".join(map(str, images.image_shape[1:]))
        for family in reference_configs():
            row = f"{family} conv {side}"
            log(f"  [{device}] {row}: {sizes.steps} steps x {sizes.repeats} repeats ...")
            results[row] = bench_family(family, images, device, sizes, conv_config(family))
    return results
