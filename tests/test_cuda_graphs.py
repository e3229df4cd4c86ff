"""Training steps replayed as CUDA graphs (the default on a GPU) train the model the eager
steps train, restore and resume like them, and really replay. Skipped without CUDA: CI has
none; `tests/bench/device_check.sh` runs them on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch

from trainables import Experiment, noise
from trainables.contract import CASES as CONTRACT_CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The contract's cases (every family, with its defaults and its declared test variants),
# plus the AAE's unconditioned mixture prior, whose step draws the modes on the device.
CASES = [(case.name, case.params) for case in CONTRACT_CASES if case.family.cuda_graphs] + [
    ("aae", {"prior": "mixture"}),
]
IDS = ["-".join([name, *params]) for name, params in CASES]


@pytest.fixture(scope="module")
def digits_cuda(digits):
    return digits.to("cuda")


def trained(name, params, dataset, epochs, **kwargs) -> tuple[Experiment, list[dict]]:
    experiment = Experiment.create(name, params, dataset, seed=4, **kwargs)
    losses = [experiment.train_epoch() for _ in range(epochs)]
    return experiment, losses


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_graph_replays_train_like_eager_steps(digits_cuda, name, params):
    graphed, graphed_losses = trained(name, params, digits_cuda, 3)
    eager, eager_losses = trained(name, params, digits_cuda, 3, cuda_graphs=False)
    assert graphed._step_graph is not None and graphed._step_graph.graph is not None
    assert eager._step_graph is None
    # The same kernels on the same random stream: equal but for cuBLAS's choices under
    # capture, which three epochs may amplify a little. Stale weights, skipped updates or
    # repeated noise would be off by far more.
    for g, e in zip(graphed_losses, eager_losses, strict=True):
        assert g.keys() == e.keys()
        for key in g:
            assert g[key] == pytest.approx(e[key], rel=1e-2, abs=1e-3), key
    for (key, a), b in zip(
        graphed.model.state_dict().items(), eager.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=key)
    assert graphed.evaluate(quick=True)["diverged"] == 0.0


def test_every_replay_is_a_training_step(digits_cuda):
    experiment, _ = trained("icvae", {}, digits_cuda, 1)
    before = [p.detach().clone() for p in experiment.model.parameters()]
    step_count = next(iter(experiment.optimizers["model"].state.values()))["step"].item()
    experiment.train_epoch()
    after_count = next(iter(experiment.optimizers["model"].state.values()))["step"].item()
    batches = len(digits_cuda.x_train) // experiment.config.batch_size
    assert after_count - step_count == batches
    params = list(experiment.model.parameters())
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_restore_after_capture_resumes_exactly(digits_cuda, tmp_path):
    original, _ = trained("mlvae", {}, digits_cuda, 1)
    original.save(tmp_path)
    expected = original.train_epoch()
    # Restoring into the experiment that captured replaces its optimiser state: the old
    # graph must go, and the next epoch must continue from the checkpoint.
    original.restore(tmp_path)
    assert original._step_graph is None
    assert original.train_epoch() == pytest.approx(expected, rel=1e-5)
    resumed = Experiment.create("mlvae", {}, digits_cuda, seed=4)
    resumed.restore(tmp_path)
    assert resumed.train_epoch() == pytest.approx(expected, rel=1e-5)


def test_a_batch_of_another_size_runs_eagerly(digits_cuda):
    experiment, _ = trained("icvae", {}, digits_cuda, 1)
    graph = experiment._step_graph
    model, optimizer = experiment.model, experiment.optimizers["model"]
    calls = []

    def step(index):
        calls.append(len(index))
        with noise.standalone(device="cuda"):
            terms = model.loss(digits_cuda.x_train[index], digits_cuda.y_train[index])
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return terms

    short = torch.arange(10, device="cuda")
    terms = graph.run(step, short)
    assert calls == [10] and torch.isfinite(terms["loss"])


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_graphed_replicas_follow_their_graphed_solo_runs(digits_cuda, name, params):
    """S = 3 replicas as one captured step against three solo runs, each captured too:
    the vmapped step must capture, replay every batch, and keep each replica its own."""
    seeds = (4, 5, 6)
    batched = Experiment.create(name, params, digits_cuda, seed=seeds[0], seeds=len(seeds))
    batched_losses = [batched.train_replicas() for _ in range(2)]
    assert batched._step_graph is not None and batched._step_graph.graph is not None
    for k, seed in enumerate(seeds):
        solo = Experiment.create(name, params, digits_cuda, seed=seed)
        solo_losses = [solo.train_epoch() for _ in range(2)]
        for epoch, losses in enumerate(solo_losses):
            for key, value in losses.items():
                assert batched_losses[epoch][k][key] == pytest.approx(value, rel=1e-2, abs=1e-3), (
                    k,
                    key,
                )
        for (key, a), b in zip(
            solo.model.state_dict().items(), batched.models()[k].state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=key)
    assert [m["diverged"] for m in batched.evaluate_replicas(quick=True)] == [0.0] * 3
