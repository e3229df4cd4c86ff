"""The contract every model family meets, as pytest tests run over every registered family,
each test variant it declares and each architecture (`arch`) besides its default: nothing
here names a family. It ships with the package, the way Optuna ships
`optuna.testing.pytest_samplers`; a test module opts in with

    from trainables.contract import *  # noqa: F403

Every case trains on the small `digits` dataset with the family's own defaults (or its
variant, or its other architecture), so the whole suite takes seconds per family on a CPU.
What a family's maths should give (closed forms, what its paper says it learns) is tested
beside it, not here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from trainables.config import ARCHS
from trainables.cuda_graphs import forbid_host_syncs
from trainables.data import Dataset, load_dataset
from trainables.errors import ConfigError
from trainables.experiment import Experiment
from trainables.family import Family
from trainables.images import is_picture
from trainables.registry import all_families, get_family

__all__ = [
    "case",
    "contract_colour_images",
    "contract_digits",
    "test_a_shared_metric_name_means_the_same_everywhere",
    "test_declarations_hold_together",
    "test_defaults_validate_and_round_trip",
    "test_evaluate_changes_nothing_and_returns_the_declared_metrics",
    "test_family_is_registered_under_its_name",
    "test_image_grids_have_the_declared_names_and_kinds",
    "test_lossless_conversions_are_accepted",
    "test_non_finite_weights_mark_the_run_diverged",
    "test_out_of_range_names_the_field",
    "test_reconstruct_gives_images_of_the_inputs",
    "test_replicas_are_not_coupled",
    "test_replicas_follow_their_solo_runs",
    "test_replicas_resume_exactly",
    "test_same_seed_gives_identical_results",
    "test_save_and_restore_resume_exactly",
    "test_training_epoch_changes_every_weight",
    "test_training_step_is_cuda_graph_safe",
    "test_unknown_family_names_the_choices",
    "test_unknown_parameter_names_the_valid_ones",
    "test_works_on_any_image_shape_and_channel_count",
    "test_wrong_type_names_the_field",
]


@dataclass(frozen=True)
class Case:
    """A family with its defaults, or with one of its declared test variants."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    # The rules that compare runs with each other (the same seed, a resumed run, replicas
    # against solo runs) hold on any data; a case may run them on this many training
    # samples only, where a full epoch of digits would cost more than it checks.
    compared_samples: int | None = None

    @property
    def family(self) -> Family:
        return get_family(self.name)

    @property
    def id(self) -> str:
        return "-".join([self.name, *(f"{k}={v}" for k, v in self.params.items())])

    def experiment(
        self, dataset: Dataset, seed: int = 0, seeds: int = 1, compared: bool = False
    ) -> Experiment:
        """The case's experiment on `dataset`. For a rule that compares runs (`compared`),
        on the first `compared_samples` training samples where the case sets them, and then
        without the metrics that need the reference classifier: it would be trained anew
        for the shorter split, at more cost than the runs it serves."""
        use_reference = True
        if compared and self.compared_samples is not None:
            # The contract's datasets carry no factors to cut with the split.
            n = self.compared_samples
            dataset = dataclasses.replace(
                dataset, x_train=dataset.x_train[:n], y_train=dataset.y_train[:n]
            )
            use_reference = False
        return Experiment.create(
            self.name, self.params, dataset, seed=seed, seeds=seeds, use_reference=use_reference
        )


FAMILY_NAMES = sorted(all_families())


# An epoch of Locatello et al.'s convolutions costs several of the MLPs' on 8x8 digits (16x16
# once padded; a float64 step of 3 replicas 0.27 s on one CPU core, against 0.05 s in
# float32): the rules that compare runs take three batches of 64 for them.
OTHER_ARCH_COMPARED_SAMPLES = 192


def _other_archs(name: str) -> list[Case]:
    """Every family honours `arch` (FamilyConfig): its defaults run once more with each
    other architecture, whatever its test_variants say, so a plugin is held to it too."""
    default = get_family(name).make_config().arch
    return [
        Case(name, {"arch": arch}, compared_samples=OTHER_ARCH_COMPARED_SAMPLES)
        for arch in ARCHS
        if arch != default
    ]


CASES = [Case(name) for name in FAMILY_NAMES] + [
    Case(name, dict(params)) for name in FAMILY_NAMES for params in get_family(name).test_variants
]
CASES += [case for name in FAMILY_NAMES for case in _other_archs(name)]


@pytest.fixture(scope="session")
def contract_digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def contract_colour_images(contract_digits) -> Dataset:
    """Digits as 3-channel images of 10 x 9 pixels (each channel a different function of
    the digit, padded unevenly): a shape and channel count no family was written for."""

    def colour(x: torch.Tensor) -> torch.Tensor:
        grey = torch.nn.functional.pad(x.view(-1, 1, 8, 8), (0, 1, 2, 0))
        return torch.cat([grey, 0.5 * grey, 1.0 - grey], dim=1).flatten(1)

    return dataclasses.replace(
        contract_digits,
        name="digits-colour-10x9",
        x_train=colour(contract_digits.x_train),
        x_test=colour(contract_digits.x_test),
        image_shape=(3, 10, 9),
    )


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request) -> Case:
    return request.param


CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """The same metrics to the last bit, NaN (undefined: a swap metric without the
    reference classifier) matching NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


# --- declarations ------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_is_registered_under_its_name(name):
    family = get_family(name)
    assert family.name == name
    assert importlib.import_module(type(family).__module__).FAMILY is family
    assert family.summary and "\n" not in family.summary


def test_unknown_family_names_the_choices():
    with pytest.raises(ConfigError, match=r"^family: unknown family 'no-such-family'; choose one"):
        get_family("no-such-family")


def test_declarations_hold_together(case):
    family, config = case.family, case.family.make_config(case.params)
    assert "recon_mse" in family.metric_names
    reported = family.reported_metrics(config)
    assert set(reported) <= set(family.metric_names), reported
    assert family.default_objectives
    for objective in family.default_objectives:
        metric, _, direction = objective.partition(":")
        assert direction == family.metric(metric).goal in ("max", "min"), objective
        if not case.params:
            # With its defaults, a family reports what its sweeps optimise.
            assert metric in reported, objective
    grid_names = {grid.name for grid in family.grids}
    assert {"reconstructions", "latent_scatter"} <= grid_names
    assert family.image_grids.keys() == grid_names


def test_a_shared_metric_name_means_the_same_everywhere():
    seen: dict[str, tuple] = {}
    for family in all_families().values():
        for metric in family.metrics:
            meaning = (metric.low, metric.high, metric.goal)
            assert seen.setdefault(metric.name, meaning) == meaning, (family.name, metric)


# --- training ------------------------------------------------------------------------------
def test_training_epoch_changes_every_weight(case, contract_digits):
    experiment = case.experiment(contract_digits)
    before = snapshot(experiment.model)
    losses = experiment.train_epoch()
    assert experiment.epoch == 1 and not experiment.diverged
    assert "train_loss" in losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    after = snapshot(experiment.model)
    unchanged = [key for key in before if torch.equal(before[key], after[key])]
    assert not unchanged, f"not trained: {unchanged}"
    if experiment.config.arch == "conv":
        convolutions = [m for m in experiment.model.modules() if isinstance(m, CONVOLUTIONS)]
        assert convolutions, "arch=conv built no convolution; every family honours arch"


def test_training_step_is_cuda_graph_safe(case, contract_digits):
    """On a GPU the step is recorded once as a CUDA graph; an op that waits for the device
    breaks the capture. Here the step runs on the CPU with those ops made to raise, so a
    machine without a GPU catches it."""
    family = case.family
    if not family.cuda_graphs:
        pytest.skip(f"{family.name} declares cuda_graphs = False")
    for seeds in (1, 2):  # a solo run's step, and the replicas' vmapped one
        experiment = case.experiment(contract_digits, seeds=seeds)
        training = experiment.training()
        index = next(iter(family.batches(contract_digits, experiment.config, experiment.generator)))
        if seeds > 1:
            index = index.expand(seeds, -1)
        experiment.model.train()
        # Twice: the first step creates the optimisers' state; a graph records a later one.
        with forbid_host_syncs():
            for _ in range(2):
                training.noise.begin_step()
                terms = family.step(training, index)
        assert "loss" in terms and all(torch.isfinite(t).all() for t in terms.values())
        assert all(t.shape == (() if seeds == 1 else (seeds,)) for t in terms.values())


def test_same_seed_gives_identical_results(case, contract_digits):
    def run(seed: int, evaluate_between: bool = False, evaluate: bool = True):
        experiment = case.experiment(contract_digits, seed=seed, compared=True)
        losses = [experiment.train_epoch()]
        if evaluate_between:
            experiment.evaluate()
            experiment.image_grids()
        losses.append(experiment.train_epoch())
        metrics = experiment.evaluate() if evaluate else None
        return losses, metrics, snapshot(experiment.model)

    losses_a, metrics_a, weights_a = run(seed=7)
    losses_b, metrics_b, weights_b = run(seed=7, evaluate_between=True)
    # Same seed, same results; evaluating (or drawing image grids) in between must not
    # move the training's random streams, or results would depend on the eval schedule.
    assert losses_a == losses_b
    assert same_metrics(metrics_a, metrics_b), (metrics_a, metrics_b)
    assert_same_state(weights_a, weights_b)
    # ... and the seed matters: another seed gives other weights.
    _, _, weights_c = run(seed=8, evaluate=False)
    assert any(not torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


def test_save_and_restore_resume_exactly(case, contract_digits, tmp_path):
    original = case.experiment(contract_digits, seed=3, compared=True)
    original.train_epoch()
    original.evaluate()
    original.save(tmp_path)
    saved_weights = snapshot(original.model)
    saved_metrics = dict(original.last_metrics)
    # Go on with the original ...
    losses_original = original.train_epoch()
    metrics_original = original.evaluate()

    # ... and with a fresh experiment restored from the file, as a resumed trial does.
    resumed = case.experiment(contract_digits, seed=3, compared=True)
    assert any(not torch.equal(v, saved_weights[k]) for k, v in snapshot(resumed.model).items())
    resumed.restore(tmp_path)
    assert_same_state(saved_weights, snapshot(resumed.model))
    assert resumed.epoch == 1 and same_metrics(resumed.last_metrics, saved_metrics)
    assert not resumed.diverged
    assert resumed.train_epoch() == losses_original, (
        "the restored run trains differently from the original: state that training "
        "reads is missing from state_dict() (a plain attribute, not a buffer?)"
    )
    assert same_metrics(resumed.evaluate(), metrics_original)
    assert_same_state(snapshot(original.model), snapshot(resumed.model))
    for key, optimizer in original.optimizers.items():
        assert repr(optimizer.state_dict()) == repr(resumed.optimizers[key].state_dict())
    assert resumed.epoch == original.epoch == 2


# --- seed replicas ---------------------------------------------------------------------------
# Replica k of an S-replica run against the solo run with seed k, after one epoch. The
# batched matmuls sum in another order than the single ones, and nothing else may differ.
# A batched convolution (arch=conv) adds its bias after the convolution where a single one
# adds it inside, one more rounding per output (vmap's batching rule for a batched bias;
# a transposed convolution adds it after either way and matches bit for bit).
# Gaps are measured against how far the epoch moved the weights (the displacement): a real
# difference (another batch, another noise draw, a coupled replica) is of that order.
#
# float64: the summation order is all there is. Measured on every case, threads 1 and 2,
# ATEN_CPU_CAPABILITY default and AVX-512: weights 1e-14 of the displacement, losses 7e-16
# relative. The bound 1e-9 leaves five orders for other kernels and CPUs, and eight below a
# real difference.
#
# float32 (what runs): a rounding-level difference can also flip a discrete choice, a ReLU
# input next to 0 or the sign of an Adam step on a gradient next to 0, and the trajectory
# forks for the units involved, by Adam steps of at most lr each. One-ulp changes of the
# start measure that: over 18 per family (seeds 5-7) the worst moved the weights by 1.9e-3
# of the displacement (betavae, a decoder unit's ReLU; 1.4e-4 the worst of the others). An
# Intel CPU's summation order took the same fork (3.6e-4 of the weights' norm, 1.9e-3 of the
# displacement). The bound, 1e-2, is five such forks. The epoch-mean losses stayed within
# 4e-7 relative even across the fork: bound 1e-5.
#
# A loss term that cancels to near zero keeps the absolute rounding error of the order-one
# quantities it sums (nats per image: KL pieces with their -1, log-variances), so its
# relative error grows as it shrinks. ICVAE's kl_marginal with arch=conv, whose codes
# hardly depend on the image after one epoch of digits, is 5.6e-5 nats: its gap was 7e-5
# relative but 4e-9 nats (the MLP's, at 8.4e-3 nats: 1e-6 relative, 9e-9 nats; float64's
# 6e-14 and 1e-16). So a term passes within loss_rtol of itself or loss_atol nats. Over
# every family's defaults, both archs, seeds 5-7, the worst gap of a term under one nat
# was 1.3e-7 nats in float32 (bound 1e-5) and 1.1e-16 in float64 (bound 1e-11).
#
# That nothing *couples* the replicas is checked exactly, bit for bit, by
# test_replicas_are_not_coupled; over more epochs a fork can grow (as a solo run moved to
# another thread count does), so this check is on the first epoch.
@dataclass(frozen=True)
class ReplicaBound:
    loss_rtol: float
    loss_atol: float  # nats
    weights_of_displacement: float


REPLICA_BOUNDS = {
    torch.float64: ReplicaBound(loss_rtol=1e-9, loss_atol=1e-11, weights_of_displacement=1e-9),
    torch.float32: ReplicaBound(loss_rtol=1e-5, loss_atol=1e-5, weights_of_displacement=1e-2),
}


def replica_weights(experiment: Experiment, k: int) -> dict[str, torch.Tensor]:
    return snapshot(experiment.models()[k])


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Models built, and tensors made without a dtype, in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", list(REPLICA_BOUNDS), ids=lambda dtype: str(dtype)[6:])
def test_replicas_follow_their_solo_runs(case, contract_digits, dtype):
    bound = REPLICA_BOUNDS[dtype]
    data = dataclasses.replace(
        contract_digits,
        x_train=contract_digits.x_train.to(dtype),
        x_test=contract_digits.x_test.to(dtype),
    )
    seeds = (5, 6, 7)
    with default_dtype(dtype):
        batched = case.experiment(data, seed=seeds[0], seeds=len(seeds), compared=True)
        assert batched.seeds == seeds
        assert all(p.dtype == dtype for p in batched.model.parameters())
        before = [replica_weights(batched, k) for k in range(len(seeds))]
        losses = batched.train_replicas()
        metrics = batched.evaluate_replicas(quick=True)
        for k, seed in enumerate(seeds):
            solo = case.experiment(data, seed=seed, compared=True)
            # The same initialisation, exactly: each replica is built from its own seed.
            assert_same_state(snapshot(solo.model), before[k])
            solo_losses = solo.train_epoch()
            assert solo_losses.keys() == losses[k].keys()
            for name, value in solo_losses.items():
                assert losses[k][name] == pytest.approx(
                    value, rel=bound.loss_rtol, abs=bound.loss_atol
                ), (
                    k,
                    name,
                )
            start, ours = flat_weights(before[k]), flat_weights(snapshot(solo.model))
            theirs = flat_weights(replica_weights(batched, k))
            gap = ((ours - theirs).norm() / (ours - start).norm()).item()
            assert gap <= bound.weights_of_displacement, (k, gap)
            assert metrics[k]["diverged"] == 0.0
            assert solo.evaluate(quick=True).keys() == metrics[k].keys()


def flat_weights(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten().double() for v in state.values() if v.is_floating_point()])


def test_replicas_are_not_coupled(case, contract_digits):
    """Poison one replica (NaN weights) and another's start (other weights): the untouched
    replica's trajectory must not move by a single bit, and only the poisoned one diverges."""
    clean = case.experiment(contract_digits, seed=0, seeds=3, compared=True)
    poisoned = case.experiment(contract_digits, seed=0, seeds=3, compared=True)
    with torch.no_grad():
        for parameter in poisoned.model.parameters():
            parameter[1] = float("nan")
            parameter[2] += 0.01
    for _ in range(2):
        clean_losses, poisoned_losses = clean.train_replicas(), poisoned.train_replicas()
        assert clean_losses[0] == poisoned_losses[0]
    assert_same_state(replica_weights(clean, 0), replica_weights(poisoned, 0))
    assert not clean.diverged and not poisoned.diverged
    assert poisoned.replica_diverged == [False, True, False]
    metrics = poisoned.evaluate_replicas()
    assert same_metrics(metrics[0], clean.evaluate_replicas()[0])
    assert metrics[1]["diverged"] == 1.0
    assert all(math.isnan(v) for name, v in metrics[1].items() if name != "diverged")
    assert metrics[2]["diverged"] == 0.0


def test_replicas_resume_exactly(case, contract_digits, tmp_path):
    original = case.experiment(contract_digits, seed=2, seeds=2, compared=True)
    original.train_replicas()
    original.save(tmp_path)
    expected = original.train_replicas()
    resumed = case.experiment(contract_digits, seed=2, seeds=2, compared=True)
    resumed.restore(tmp_path)
    assert resumed.train_replicas() == expected, (
        "restored replicas train differently from the originals: state that training "
        "reads is missing from state_dict() (a plain attribute, not a buffer?)"
    )
    assert_same_state(snapshot(original.model), snapshot(resumed.model))
    # A state saved by other seeds is refused, naming the setting; so is one from before
    # replicas existed (no seeds, no noise stream).
    other = case.experiment(contract_digits, seed=3, seeds=2, compared=True)
    with pytest.raises(ConfigError, match=r"^seeds: "):
        other.restore(tmp_path)
    old = {k: v for k, v in original.state_dict().items() if k not in ("seeds", "noise")}
    with pytest.raises(ConfigError, match=r"^state: written by a version from before"):
        resumed.load_state_dict(old)


def test_non_finite_weights_mark_the_run_diverged(case, contract_digits):
    experiment = case.experiment(contract_digits)
    with torch.no_grad():
        next(experiment.model.parameters()).fill_(float("nan"))
    experiment.train_epoch()  # must not raise
    assert experiment.diverged
    metrics = experiment.evaluate()
    assert metrics["diverged"] == 1.0
    assert set(metrics) == set(case.family.metric_names) | {"diverged"}
    assert all(math.isnan(v) for k, v in metrics.items() if k != "diverged")
    assert experiment.image_grids() == {}


# --- evaluation ----------------------------------------------------------------------------
def test_evaluate_changes_nothing_and_returns_the_declared_metrics(case, contract_digits):
    family = case.family
    experiment = case.experiment(contract_digits)
    experiment.train_epoch()
    weights = snapshot(experiment.model)
    optimizer_states = {k: repr(o.state_dict()) for k, o in experiment.optimizers.items()}
    generator_state = experiment.generator.get_state().clone()

    metrics = experiment.evaluate()

    assert_same_state(weights, snapshot(experiment.model))
    assert optimizer_states == {k: repr(o.state_dict()) for k, o in experiment.optimizers.items()}
    assert torch.equal(generator_state, experiment.generator.get_state())
    expected = set(family.reported_metrics(experiment.config)) | {"diverged"}
    assert set(metrics) == expected, (
        f"evaluate() left out {sorted(expected - set(metrics))} and returned undeclared "
        f"{sorted(set(metrics) - expected)}"
    )
    assert metrics["diverged"] == 0.0
    for name, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), (name, value)
        assert family.metric(name).admits(value), (name, value, family.metric(name).range)
    assert experiment.last_metrics == metrics


def test_image_grids_have_the_declared_names_and_kinds(case, contract_digits):
    family = case.family
    declared = {grid.name: grid for grid in family.grids}
    grids = case.experiment(contract_digits).image_grids()
    assert grids.keys() <= declared.keys()
    assert {name for name, grid in declared.items() if not grid.optional} <= grids.keys()
    for name, image in grids.items():
        if declared[name].kind == "picture":
            assert is_picture(image) and image.shape[2] == 3, name
            # More than a blank canvas on it.
            assert image.shape[0] > 100 and image.shape[1] > 100, name
            assert len(torch.unique(image.reshape(-1, 3), dim=0)) > 10, name
            continue
        assert image.dim() == 5 and image.shape[2:] == contract_digits.image_shape, name
        assert image.shape[0] >= 1 and image.shape[1] >= 1, name
        assert image.is_floating_point() and image.min() >= 0.0 and image.max() <= 1.0, name


def test_works_on_any_image_shape_and_channel_count(case, contract_colour_images):
    """Users bring their own images (npz:, folder:): every family trains, evaluates and
    draws its grids on an RGB, non-square shape, the grids in that shape."""
    data = contract_colour_images
    experiment = case.experiment(data)
    losses = experiment.train_epoch()
    assert all(math.isfinite(v) for v in losses.values()), losses
    metrics = experiment.evaluate()
    assert metrics["diverged"] == 0.0
    for name, value in metrics.items():
        assert case.family.metric(name).admits(value), (name, value)
    x, y = data.x_test[:4], data.y_test[:4]
    with torch.no_grad():
        assert experiment.model.eval().reconstruct(x, y).shape == x.shape
    declared = {grid.name: grid for grid in case.family.grids}
    for name, image in experiment.image_grids().items():
        if declared[name].kind == "images":
            assert image.shape[2:] == data.image_shape, name


def test_reconstruct_gives_images_of_the_inputs(case, contract_digits):
    experiment = case.experiment(contract_digits)
    experiment.train_epoch()
    x, y = contract_digits.x_test[:16], contract_digits.y_test[:16]
    with torch.no_grad():
        x_hat = experiment.model.eval().reconstruct(x, y)
    assert x_hat.shape == x.shape
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0
    # Closer to its own input than to another image's, on average, after one epoch.
    own = ((x_hat - x) ** 2).mean()
    other = ((x_hat - x.roll(1, dims=0)) ** 2).mean()
    assert own < other


# --- configuration -------------------------------------------------------------------------
def test_defaults_validate_and_round_trip(case):
    family = case.family
    config = family.make_config(case.params)
    assert set(config.to_dict()) == set(family.config_cls.field_names())
    assert family.make_config(config.to_dict()) == config
    assert family.make_config(None) == family.config_cls()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_lossless_conversions_are_accepted(name):
    family = get_family(name)
    values = {"lr": 1, "batch_size": 32.0}
    tuples = [f for f, t in _field_types(name).items() if typing.get_origin(t) is tuple]
    values.update({f: [32, 16] for f in tuples})
    config = family.make_config(values)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.batch_size == 32 and isinstance(config.batch_size, int)
    for f in tuples:
        assert getattr(config, f) == (32, 16) and config.to_dict()[f] == [32, 16]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_unknown_parameter_names_the_valid_ones(name):
    family = get_family(name)
    with pytest.raises(ConfigError) as info:
        family.make_config({"no_such_parameter": 4})
    message = str(info.value)
    assert message.startswith("no_such_parameter: unknown parameter")
    for field_name in family.config_cls.field_names():
        assert field_name in message


def _field_types(name: str) -> dict[str, Any]:
    hints = typing.get_type_hints(get_family(name).config_cls)
    return {f: hints[f] for f in get_family(name).config_cls.field_names()}


def _wrong_type_cases():
    for name in FAMILY_NAMES:
        for field_name, annotation in _field_types(name).items():
            yield pytest.param(name, field_name, "abc", id=f"{name}-{field_name}=abc")
            if annotation in (int, float):
                yield pytest.param(name, field_name, True, id=f"{name}-{field_name}=True")
            if annotation is int:
                yield pytest.param(name, field_name, 2.5, id=f"{name}-{field_name}=2.5")
            if annotation is bool:
                yield pytest.param(name, field_name, 1, id=f"{name}-{field_name}=1")


@pytest.mark.parametrize(("name", "field_name", "value"), list(_wrong_type_cases()))
def test_wrong_type_names_the_field(name, field_name, value):
    with pytest.raises(ConfigError) as info:
        get_family(name).make_config({field_name: value})
    assert str(info.value).startswith(f"{field_name}: "), str(info.value)
    assert "\n" not in str(info.value)


def _out_of_range_cases():
    for name in FAMILY_NAMES:
        types = _field_types(name)
        for field_name, (low, high) in get_family(name).config_cls.all_bounds().items():
            is_tuple = typing.get_origin(types[field_name]) is tuple
            integral = types[field_name] is int or is_tuple
            outside = []
            if low is not None:
                outside.append(int(low) - 1 if integral else low - 1.0)
            if high is not None:
                outside.append(int(high) + 1 if integral else high * 2 + 1.0)
            for value in outside:
                value = [64, value] if is_tuple else value
                yield pytest.param(name, field_name, value, id=f"{name}-{field_name}={value}")


@pytest.mark.parametrize(("name", "field_name", "value"), list(_out_of_range_cases()))
def test_out_of_range_names_the_field(name, field_name, value):
    with pytest.raises(ConfigError) as info:
        get_family(name).make_config({field_name: value})
    message = str(info.value)
    assert message.startswith(f"{field_name}: "), message
    assert "out of range" in message and "\n" not in message
