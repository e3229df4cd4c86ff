"""S replicas evaluated as one, with each family's `evaluate` left as it is written, for one
model.

`run_replicas` runs each replica's evaluation as a coroutine (a greenlet), one at a time
and in replica order: a replica runs until it calls `batched` (a probe fit, the reference
classifier), waits there, and the next one runs. Once every replica waits or is done, the
waiting calls run: those that share a key as one batch (S probe fits as one batched
L-BFGS, S sets of images through the classifier as one), and each replica resumes with
its own answer. The order is fixed, so the result is too; outside `run_replicas` (a solo
run), `batched` just calls through.

Coroutines, because a family's `evaluate` is a plain function, and only a coroutine with
its own stack can pause one in the middle without its author writing it as a generator.
Greenlets rather than threads: they run on the caller's thread, so torch's per-thread
state (the current CUDA device, the thread count) and its OpenMP thread pool are the
caller's. Grad mode is the one such state a family's `evaluate` changes across a
`batched` call (its `torch.no_grad()`): each replica keeps its own. Any other mode it
enters around a probe fit (autocast, inference mode) would be shared with the replicas
that run while it waits.
With threads each replica had a pool of its own, whose idle threads spun on the cores
the batch then needed (bench section h, 2 cores: 4 replicas' quick evaluation 3.3-5.3x
one replica's, and up to 1.3x slower than 4 solo evaluations).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")
# A batch: the arguments of every replica's call that shares a key -> each one's answer.
RunBatch = Callable[[list[Any]], Sequence[Any]]
Call = tuple[Hashable, RunBatch, Any]


class _Replica(greenlet):
    """One replica's evaluation, paused at each `batched` call."""

    def __init__(self, task: Callable[[], Any]):
        super().__init__(self._evaluate)
        self.task = task
        self.outcome: tuple[bool, Any] | None = None  # (ok, result or exception) once ended
        # Its own grad mode: it pauses inside the family's `torch.no_grad()`, whose exit
        # restores what was set at its entry, so modes interleaved across replicas would
        # leave the caller's grad mode off.
        self.grad_enabled = torch.is_grad_enabled()

    def resume(self, *answer: tuple[bool, Any]) -> Any:
        """Run until the next `batched` call (returned) or the end, in its own grad mode."""
        caller = torch.is_grad_enabled()
        torch.set_grad_enabled(self.grad_enabled)
        try:
            return self.switch(*answer)
        finally:
            self.grad_enabled = torch.is_grad_enabled()
            torch.set_grad_enabled(caller)

    def _evaluate(self) -> None:
        try:
            self.outcome = (True, self.task())
        except GreenletExit:
            raise
        except BaseException as error:
            self.outcome = (False, error)

    def wait(self, call: Call) -> Any:
        """Hand `call` to `run_replicas` and return this replica's answer."""
        ok, answer = self.parent.switch(call)
        if not ok:
            raise answer
        return answer


def batched(key: Hashable, run_batch: RunBatch, argument: Any) -> Any:
    """`run_batch([argument])[0]`, or, in a replica's evaluation under `run_replicas`, this
    replica's answer from one `run_batch` over the arguments of every replica that calls
    with the same `key` in the same round."""
    current = getcurrent()
    if isinstance(current, _Replica):
        return current.wait((key, run_batch, argument))
    return run_batch([argument])[0]


def run_replicas(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, the tasks (one replica's evaluation each) run as described in the
    module's docstring; the first task's exception (in replica order), if any, is raised
    once every task has ended. One task runs here, directly."""
    if len(tasks) == 1:
        return [tasks[0]()]
    replicas = [_Replica(task) for task in tasks]
    answers: dict[_Replica, tuple[bool, Any]] = {}
    running = replicas
    while running:
        calls: list[tuple[_Replica, Call]] = []
        for replica in running:  # each runs until it waits at `batched` or ends
            call = replica.resume(answers.pop(replica)) if replica in answers else replica.resume()
            if not replica.dead:
                calls.append((replica, call))
        answers = _answer(calls)
        running = [replica for replica, _ in calls]
    for ok, value in (replica.outcome for replica in replicas):  # type: ignore[misc]
        if not ok:
            raise value
    return [replica.outcome[1] for replica in replicas]  # type: ignore[index]


def _answer(calls: list[tuple[_Replica, Call]]) -> dict[_Replica, tuple[bool, Any]]:
    """Run the waiting calls, one batch per key, in the order their first caller came."""
    groups: dict[Hashable, list[tuple[_Replica, Call]]] = {}
    for replica, call in calls:
        groups.setdefault(call[0], []).append((replica, call))
    answers = {}
    for members in groups.values():
        run_batch = members[0][1][1]
        try:
            with torch.no_grad():
                found = run_batch([call[2] for _, call in members])
            outcomes = [(True, answer) for answer in found]
        except Exception as error:  # every caller of the batch raises it
            outcomes = [(False, error)] * len(members)
        for (replica, _), outcome in zip(members, outcomes, strict=True):
            answers[replica] = outcome
    return answers
