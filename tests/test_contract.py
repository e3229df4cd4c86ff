"""The family contract over every registered family (trainables/contract.py), and checks
that the base holds a family to its declarations: a toy family breaks them one at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

pytest.register_assert_rewrite("trainables.contract")

from trainables import Experiment, all_families  # noqa: E402
from trainables.contract import *  # noqa: E402, F403
from trainables.cuda_graphs import forbid_host_syncs  # noqa: E402
from trainables.errors import ContractError  # noqa: E402
from trainables.family import (  # noqa: E402
    Family,
    FamilyConfig,
    FamilyModel,
    Metric,
    Training,
    gradient_step,
    one_hot,
)
from trainables.grids import LATENT_SCATTER, RECONSTRUCTIONS  # noqa: E402
from trainables.metrics import RECON_MSE, metric_range  # noqa: E402


# --- a toy family: a linear autoencoder ------------------------------------------------------
@dataclass
class ToyConfig(FamilyConfig):
    z_dim: int = 2

    bounds: ClassVar = {"z_dim": (1, 64)}


class ToyModel(FamilyModel):
    def __init__(self, n_pixels: int, z_dim: int):
        super().__init__()
        self.encoder = torch.nn.Linear(n_pixels, z_dim)
        self.decoder = torch.nn.Linear(z_dim, n_pixels)

    def reconstruct(self, x, labels):
        return torch.sigmoid(self.decoder(self.encoder(x)))

    def latent_codes(self, x, labels):
        return {"z": self.encoder(x)}


class ToyFamily(Family[ToyConfig, ToyModel]):
    name = "toy"
    summary = "a linear autoencoder"
    config_cls = ToyConfig
    metrics = (RECON_MSE, Metric("spread", high=None, goal="max"))
    objectives = ("recon_mse",)
    grids = (RECONSTRUCTIONS, LATENT_SCATTER)
    # What evaluate() returns on top of recon_mse; each test sets its own.
    extra: ClassVar[dict] = {}

    def make_model(self, config, dataset):
        return ToyModel(dataset.n_pixels, config.z_dim)

    def step(self, training: Training, index):
        x = training.dataset.x_train[index]
        loss = ((training.model.reconstruct(x, None) - x) ** 2).mean()
        gradient_step(training.optimizers["model"], loss)
        return {"loss": loss}

    def evaluate(self, model, dataset, config, ctx):
        with torch.no_grad():
            error = ((model.reconstruct(ctx.x_test, None) - ctx.x_test) ** 2).mean()
        return {"recon_mse": float(error), **self.extra}


def toy_experiment(digits, extra: dict) -> Experiment:
    family = type("Toy", (ToyFamily,), {"extra": extra})()
    experiment = Experiment.create(family, {}, digits, use_reference=False)
    experiment.train_epoch()
    return experiment


def test_a_family_that_keeps_its_declarations_runs(digits):
    experiment = toy_experiment(digits, {"spread": 12.5})
    metrics = experiment.evaluate()
    assert set(metrics) == {"recon_mse", "spread", "diverged"}
    assert experiment.family.default_objectives == ("recon_mse:min",)
    assert experiment.family.metric_range("spread") == (0.0, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sparsity": 0.5}, r"^toy: evaluate\(\) returned 'sparsity', which Toy.metrics does not"),
        ({"spread": -0.5}, r"^toy: evaluate\(\) returned spread=-0.5, outside .* \[0.0, inf\]"),
        ({"spread": torch.tensor(1.0)}, r"^toy: evaluate\(\) returned spread=.*metrics are Python"),
    ],
    ids=["undeclared", "out-of-range", "not-a-float"],
)
def test_an_evaluation_that_breaks_the_declarations_raises(digits, extra, message):
    experiment = toy_experiment(digits, extra)
    with pytest.raises(ContractError, match=message):
        experiment.evaluate()


def test_nan_and_rounding_at_a_bound_are_inside_the_range(digits):
    # NaN is how a metric says "undefined"; a non-negative float32 estimate may round a
    # few ulps below zero.
    for value in (math.nan, -1e-9):
        assert toy_experiment(digits, {"spread": value}).evaluate()["recon_mse"] >= 0


def test_a_model_without_latent_codes_fails_when_built():
    class NoCodes(FamilyModel):
        def reconstruct(self, x, labels):
            return x

    with pytest.raises(TypeError, match="latent_codes"):
        NoCodes()


def test_a_model_that_is_not_a_family_model_fails_when_built(digits):
    class Plain(ToyFamily):
        def make_model(self, config, dataset):
            return torch.nn.Linear(2, 2)

    with pytest.raises(ContractError, match=r"^toy: make_model\(\) returned a Linear"):
        Experiment.create(Plain(), {}, digits)


def test_a_family_without_a_step_cannot_be_made():
    class NoStep(Family):
        pass

    with pytest.raises(TypeError, match="step"):
        NoStep()


@pytest.mark.parametrize(
    ("declarations", "message"),
    [
        ({"objectives": ("spread_ratio",)}, "objective 'spread_ratio' must name a declared"),
        ({"metrics": (RECON_MSE, Metric("spread"))}, "objective 'spread' must name .* with a goal"),
        ({"metrics": (RECON_MSE, RECON_MSE)}, r"metric\(s\) recon_mse declared twice"),
        ({"metrics": (RECON_MSE, Metric("diverged"))}, "Experiment reports .*diverged"),
        ({"test_variants": ({"z_dim": 0},)}, r"\{'z_dim': 0\} is not a valid config"),
        ({"grids": (RECONSTRUCTIONS, RECONSTRUCTIONS)}, "grid.* reconstructions declared twice"),
    ],
)
def test_inconsistent_declarations_fail_when_the_family_is_made(declarations, message):
    broken = type("Broken", (ToyFamily,), {"objectives": ("spread",), **declarations})
    with pytest.raises(ContractError, match=message):
        broken()


def test_missing_declarations_are_named():
    declared = {k: v for k, v in vars(ToyFamily).items() if not k.startswith("_")}
    del declared["summary"]
    bare = type("Bare", (Family,), declared)
    with pytest.raises(ContractError, match=r"^Bare: declare the class attribute\(s\) summary"):
        bare()


# --- the CPU check for CUDA-graph safety -----------------------------------------------------
@pytest.mark.parametrize(
    "op",
    [
        lambda x: x.sum().item(),
        lambda x: float(x.sum()),
        lambda x: x * 2 if x.sum() > 0 else x,
        lambda x: x[x > 0.5],
        lambda x: torch.nonzero(x),
        lambda x: torch.unique(x),
        lambda x: x + torch.tensor([1.0]),
        lambda x: torch.arange(3).repeat_interleave((x[:3, 0] * 3).long()),
    ],
    ids=["item", "float", "branch", "mask", "nonzero", "unique", "tensor-from-data", "repeats"],
)
def test_host_syncs_are_caught_on_the_cpu(op):
    x = torch.rand(8, 4)
    with pytest.raises(ContractError, match="a CUDA graph cannot capture it"), forbid_host_syncs():
        op(x)


def test_capture_safe_ops_pass_and_one_hot_is_exempt_only_inside_one_hot():
    x, labels = torch.rand(8, 4, requires_grad=True), torch.tensor([0, 3, 9, 1])
    index = torch.tensor([0, 2])
    with forbid_host_syncs():
        (x * 2).sum().backward()
        x.detach()[index].mean()
        torch.arange(4).repeat_interleave(2)
        one_hot(labels, 10)
        with pytest.raises(ContractError):
            labels.max().item()


# --- what the rest of the tool reads -------------------------------------------------------------
def test_metric_range_reads_the_declarations():
    assert metric_range("recon_mse") == (0.0, 1.0)
    assert metric_range("prior_mmd") == (0.0, None)
    assert metric_range("train_seconds") == (0.0, None)
    assert metric_range("diverged") == (0.0, 1.0)
    with pytest.raises(KeyError, match="no registered family declares"):
        metric_range("no_such_metric")


@pytest.mark.parametrize("name", sorted(all_families()))
def test_every_family_ships_a_search_space(name):
    from search_spaces.loader import load_space

    assert load_space(name).distributions
