"""trainables.batching: S replica evaluations run as coroutines, one at a time, in order; their
batched calls meet, one batch per key; and an S-replica experiment's evaluation gives each
replica what evaluating it alone gives."""

from __future__ import annotations

import threading

import pytest
import torch

from trainables import Experiment, load_dataset
from trainables.batching import batched, run_replicas


def test_calls_with_one_key_run_as_one_batch_and_each_gets_its_answer():
    batches, trace = [], []

    def double(values):
        batches.append(list(values))
        return [2 * v for v in values]

    def replica(k):
        def run():
            trace.append((k, "start"))
            first = batched("double", double, k)
            trace.append((k, "resumed"))
            return first + batched("double", double, 10 * k)

        return run

    assert run_replicas([replica(k) for k in range(3)]) == [0, 22, 44]
    assert batches == [[0, 1, 2], [0, 10, 20]]
    # Each ran to its call in replica order, then each resumed in order.
    assert trace == [(0, "start"), (1, "start"), (2, "start")] + [(k, "resumed") for k in range(3)]


def test_calls_with_other_keys_batch_apart_and_a_replica_may_call_none():
    seen = []

    def record(tag):
        def run(values):
            seen.append((tag, list(values)))
            return values

        return run

    tasks = [
        lambda: batched("a", record("a"), 1),
        lambda: batched("b", record("b"), 2),
        lambda: "no call",
        lambda: batched("a", record("a"), 3),
    ]
    assert run_replicas(tasks) == [1, 2, "no call", 3]
    assert seen == [("a", [1, 3]), ("b", [2])]


def test_outside_run_replicas_a_call_runs_alone():
    assert batched("x", lambda values: [v + 1 for v in values], 1) == 2
    # Replicas run on the caller's thread (one OpenMP pool, torch's per-thread state).
    here = threading.current_thread()
    assert run_replicas([threading.current_thread] * 3) == [here] * 3


def test_an_error_reaches_the_caller_after_every_replica_ended():
    ended = []

    def fails():
        raise ValueError("replica 1 broke")

    def finishes(k):
        def run():
            value = batched("k", lambda values: values, k)
            ended.append(k)
            return value

        return run

    with pytest.raises(ValueError, match="replica 1 broke"):
        run_replicas([finishes(0), fails, finishes(2)])
    assert ended == [0, 2]

    def broken_batch(values):
        raise RuntimeError("the batch broke")

    with pytest.raises(RuntimeError, match="the batch broke"):
        run_replicas([lambda: batched("b", broken_batch, 0)] * 2)


def test_replicas_start_in_the_callers_grad_mode():
    with torch.no_grad():
        assert run_replicas([torch.is_grad_enabled] * 2) == [False, False]
    assert run_replicas([torch.is_grad_enabled] * 2) == [True, True]


@pytest.mark.parametrize("family", ["mlvae", "icvae", "aae", "betavae"])
def test_a_batched_evaluation_gives_each_replica_its_own_evaluation(family):
    """evaluate_replicas fits every replica's probes as one batch and reads every
    replica's swaps as one; each replica's metrics are those of evaluating its model
    alone (trainables/batching's rendezvous off), within the probes' tolerance."""
    digits = load_dataset("digits")
    experiment = Experiment.create(family, {}, digits, seed=3, seeds=3)
    experiment.train_replicas()
    for quick in (True, False):
        together = experiment.evaluate_replicas(quick=quick)
        context = experiment.eval_context.quick() if quick else experiment.eval_context
        for model, metrics in zip(experiment.models(), together, strict=True):
            alone = experiment.family.evaluate(model, digits, experiment.config, context)
            for name, value in alone.items():
                # Probe accuracies: TOLERANCE of tests/test_probes.py (0.01) for the
                # convex probe, its per-case MLP bound (0.02) for the others.
                bound = 0.02 if "acc" in name or name == "leakage" else 1e-6
                assert metrics[name] == pytest.approx(value, abs=bound, nan_ok=True), name


def test_each_replica_keeps_its_own_grad_mode_across_its_calls():
    """A family's evaluate pauses inside its torch.no_grad(): the modes must not leak from
    one replica to another or to the caller (interleaved, the no_grad exits would leave
    grad mode off for the training that follows)."""

    def evaluate(k):
        @torch.no_grad()
        def run():
            batched("k", lambda values: values, k)
            inside = torch.is_grad_enabled()
            batched("k", lambda values: values, k)
            return inside

        return run

    assert run_replicas([evaluate(k) for k in range(3)]) == [False] * 3
    assert torch.is_grad_enabled()

    def enabled_inside():
        batched("k", lambda values: values, 0)
        return torch.is_grad_enabled()

    with torch.no_grad():
        assert run_replicas([enabled_inside] * 2) == [False, False]
        assert not torch.is_grad_enabled()
