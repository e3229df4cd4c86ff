"""Seed replicas: the counter-based training noise they draw, the summary a replicated run
reports, and `study train --seeds`. That every family's replicas follow their solo runs
and are not coupled is in the contract suite (trainables/contract.py); sweeps with
--seeds are in tests/test_seed_sweep.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reliability_support import run_forked_cli
from scipy import stats as scipy_stats

from analysis import records
from analysis.seeds import summarize
from analysis.stats import bootstrap_interval
from trainables import noise
from trainables.noise import NoiseStream


# --- noise --------------------------------------------------------------------------------
def draws(seed: int, steps: int, shape=(64, 20), per_step: int = 2) -> torch.Tensor:
    stream = NoiseStream.for_seeds([seed], torch.device("cpu"))
    found = []
    for _ in range(steps):
        stream.begin_step()
        with noise.drawing(stream, stream.step_keys[0]):
            found += [noise.normal(shape, torch.device("cpu")) for _ in range(per_step)]
    return torch.stack(found)


def test_noise_is_standard_normal():
    values = draws(seed=0, steps=50).flatten().double().numpy()  # 128,000 values
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1.0) < 0.01
    # Kolmogorov-Smirnov against N(0, 1): a broken hash (correlated or coarse bits) fails.
    assert scipy_stats.kstest(values, "norm").pvalue > 0.001
    # Tails as far as 23 random bits reach (5.2 sd): 4 sd is seen about 8 times in 128k.
    assert 1 <= (np.abs(values) > 4).sum() <= 30


def test_every_uniform_is_strictly_inside_the_unit_interval():
    """The extreme bit patterns map inside (0, 1), so no normal is infinite: at 24 bits the
    top one rounded to 1.0 in float32 and a long run diverged."""
    top = (1 << noise.UNIFORM_BITS) - 1
    ends = noise.to_uniform(torch.tensor([0, 1, top - 1, top], dtype=torch.int64))
    assert (ends > 0).all() and (ends < 1).all()
    assert len(torch.unique(ends)) == 4
    normals = torch.special.ndtri(ends)
    assert torch.isfinite(normals).all() and normals.abs().max() < 6


def test_noise_streams_are_independent_across_seeds_draws_and_steps():
    a, b = draws(seed=0, steps=20), draws(seed=1, steps=20)
    pairs = {
        "seeds": (a, b),
        "draws within a step": (a[0::2], a[1::2]),
        "consecutive steps": (a[:-2], a[2:]),
        "neighbouring elements": (a[..., :-1], a[..., 1:]),
    }
    for what, (x, y) in pairs.items():
        r = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
        # 25,000+ pairs: independent streams correlate below 0.03 by chance.
        assert abs(r) < 0.03, (what, r)


def test_a_replicas_draws_do_not_depend_on_its_neighbours():
    """Replica k of an S-replica stream draws what a solo stream with seed k draws, inside
    vmap as outside it: what makes replica k the solo run with seed k."""
    seeds = [4, 9, 2]
    stream = NoiseStream.for_seeds(seeds, torch.device("cpu"))
    stream.begin_step()
    stream.begin_step()

    def draw(step_key):
        with noise.drawing(stream, step_key):
            return noise.normal((5, 3), torch.device("cpu")), noise.randint(10, (7,), "cpu")

    batched_normal, batched_ints = torch.func.vmap(draw)(stream.step_keys)
    for k, seed in enumerate(seeds):
        solo = NoiseStream.for_seeds([seed], torch.device("cpu"))
        solo.begin_step()
        solo.begin_step()
        with noise.drawing(solo, solo.step_keys[0]):
            assert torch.equal(noise.normal((5, 3), torch.device("cpu")), batched_normal[k])
            assert torch.equal(noise.randint(10, (7,), "cpu"), batched_ints[k])


def test_noise_resumes_from_its_state_and_refuses_other_seeds():
    stream = NoiseStream.for_seeds([3, 4], torch.device("cpu"))
    for _ in range(5):
        stream.begin_step()
    saved = stream.state_dict()
    stream.begin_step()
    expected = stream.step_keys.clone()
    resumed = NoiseStream.for_seeds([3, 4], torch.device("cpu"))
    resumed.load_state_dict(saved)
    resumed.begin_step()
    assert torch.equal(resumed.step_keys, expected)
    with pytest.raises(ValueError, match="other seeds"):
        NoiseStream.for_seeds([3, 5], torch.device("cpu")).load_state_dict(saved)


def test_noise_outside_a_step_is_an_error():
    with pytest.raises(RuntimeError, match="outside a training step"):
        noise.normal((2,), torch.device("cpu"))


# --- the summary of seeds -----------------------------------------------------------------
RANGES = {"acc": (0.0, 1.0), "mse": (0.0, None)}


def test_summary_of_seeds():
    per_seed = [
        {"acc": 0.90, "mse": 0.02, "diverged": 0.0, "train_loss": 5.0},
        {"acc": 0.80, "mse": 0.03, "diverged": 0.0, "train_loss": 6.0},
        {"acc": 0.99, "mse": 0.01, "diverged": 0.0, "train_loss": 4.0},
    ]
    summary = summarize(per_seed, [7, 8, 9], RANGES)
    assert summary["acc"] == pytest.approx(0.8966666)
    assert summary[records.seed_metric("acc", 8)] == 0.80
    assert summary["acc_std"] == pytest.approx(np.std([0.9, 0.8, 0.99], ddof=1))
    # The same interval the analysis computes for seed re-runs of one config.
    interval = bootstrap_interval([0.9, 0.8, 0.99], RANGES["acc"])
    assert (summary["acc_lower"], summary["acc_upper"]) == pytest.approx(
        (interval.low, interval.high)
    )
    assert 0.80 <= summary["acc_lower"] < summary["acc"] < summary["acc_upper"] <= 0.99
    # Loss terms get a mean and per-seed values, no interval.
    assert summary["train_loss"] == 5.0 and "train_loss_lower" not in summary
    assert summary[records.seed_metric("train_loss", 9)] == 4.0
    # A solo run's result passes through untouched.
    assert summarize(per_seed[:1], [7], RANGES) == per_seed[0]


def test_one_diverged_seed_makes_the_aggregates_undefined():
    per_seed = [
        {"acc": 0.9, "diverged": 0.0},
        {"acc": math.nan, "diverged": 1.0},
        {"acc": 0.8, "diverged": 0.0},
    ]
    summary = summarize(per_seed, [0, 1, 2], RANGES)
    assert math.isnan(summary["acc"]) and math.isnan(summary["acc_lower"])
    assert summary["diverged"] == pytest.approx(1 / 3)
    assert summary[records.seed_metric("acc", 0)] == 0.9


def test_the_searched_metric_is_the_pessimistic_bound():
    assert records.searched_metric("acc", "max", "bound", 4) == "acc_lower"
    assert records.searched_metric("mse", "min", "bound", 4) == "mse_upper"
    assert records.searched_metric("acc", "max", "mean", 4) == "acc"
    assert records.searched_metric("acc", "max", "bound", 1) == "acc"  # one seed: no interval
    assert records.base_metric("seed_12/acc", {"acc"}) == "acc"
    assert records.base_metric("acc_upper", {"acc"}) == "acc"
    assert records.base_metric("seed_x/acc", {"acc"}) is None


# --- study train --seeds ------------------------------------------------------------------
# Replica k against `study train --seed k` after 2-3 digits epochs, every family
# (measured): continuous metrics (recon_mse, prior_mmd, kl) within 5e-4; accuracies read
# by a probe or the reference classifier can flip a test sample or two near a decision
# boundary (one of 360 is 0.0028), since the codes differ in their last float bits
# (batched vs single matmuls); the MLP probe's by up to 0.015, as L-BFGS's many
# iterations carry that into a different optimum.
CONTINUOUS_ABS = 1e-3
ACCURACY_ABS = 0.01
MLP_PROBE_ABS = 0.03
MLP_METRICS = {"leakage_acc_mlp", "leakage_acc", "leakage"}


def tolerance(metric: str) -> float:
    if metric in MLP_METRICS:
        return MLP_PROBE_ABS
    return ACCURACY_ABS if "acc" in metric or metric == "degenerate" else CONTINUOUS_ABS


def test_train_seeds_reports_each_seed_and_the_config_reproduces_one(tmp_path):
    done = run_forked_cli(
        ["train", "mlvae", "--epochs", "2", "--seeds", "3", "--seed", "5", "--json"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = report["metrics"]
    assert report["spec"]["seeds"] == 3
    for metric in ("recon_mse", "content_acc_single", "leakage_acc_logreg"):
        per_seed = [metrics[records.seed_metric(metric, s)] for s in (5, 6, 7)]
        assert metrics[metric] == pytest.approx(np.mean(per_seed))
        assert metrics[f"{metric}_lower"] <= metrics[metric] <= metrics[f"{metric}_upper"]
        assert len(set(per_seed)) == 3, "seeds gave identical values: not independent runs"

    # The run's config.yaml, with --seed 6 --seeds 1, retrains replica 6 alone.
    config = str(tmp_path / report["out"] / "config.yaml")
    assert yaml.safe_load(Path(config).read_text())["seeds"] == 3
    again = run_forked_cli(
        ["train", "--config", config, "--seed", "6", "--seeds", "1", "--json"], cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    solo = json.loads(again.stdout.strip().splitlines()[-1])["metrics"]
    for metric, value in solo.items():
        if metric.endswith("_seconds"):
            continue
        expected = metrics[records.seed_metric(metric, 6)]
        assert value == pytest.approx(expected, abs=tolerance(metric)), metric


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "seeds: expected a whole number in [1, 64], got 0"),
        (["--seeds", "65"], "seeds: expected a whole number in [1, 64], got 65"),
    ],
)
def test_bad_seed_counts_are_refused(tmp_path, args, message):
    done = run_forked_cli(["train", "icvae", "--epochs", "1", *args], cwd=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: {message}; --seeds S trains S seed replicas of the config at once"
    assert not (tmp_path / "runs").exists()
