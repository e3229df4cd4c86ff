"""S replicas evaluated as one, with each family's `evaluate` left as it is written, for one
model.

`run_replicas` runs each replica's evaluation in a thread of its own, one at a time and in
replica order, so they behave as S coroutines: a replica runs until it calls `batched`
(a probe fit, the reference classifier), waits there, and the next one runs. Once every
replica waits or is done, the waiting calls run: those that share a key as one batch (S
probe fits as one batched L-BFGS, S sets of images through the classifier as one), and
each replica resumes with its own answer. Only one thread runs at any time, in a fixed
order, so the result does not depend on the scheduler; outside `run_replicas` (a solo
run), `batched` just calls through.

Threads, not generators: a family's `evaluate` is a plain function, and only a thread can
pause one in the middle without its author writing it as a coroutine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
# A batch: the arguments of every replica's call that shares a key -> each one's answer.
RunBatch = Callable[[list[Any]], Sequence[Any]]

_seat = threading.local()


def batched(key: Hashable, run_batch: RunBatch, argument: Any) -> Any:
    """`run_batch([argument])[0]`, or, in a replica's evaluation under `run_replicas`, this
    replica's answer from one `run_batch` over the arguments of every replica that calls
    with the same `key` in the same round."""
    rendezvous = getattr(_seat, "rendezvous", None)
    if rendezvous is None:
        return run_batch([argument])[0]
    return rendezvous.wait(_seat.index, key, run_batch, argument)


class _Rendezvous:
    def __init__(self, count: int):
        self.turn = [threading.Semaphore(0) for _ in range(count)]
        self.yielded = threading.Semaphore(0)
        self.calls: dict[int, tuple[Hashable, RunBatch, Any]] = {}
        self.answers: dict[int, tuple[bool, Any]] = {}

    def wait(self, index: int, key: Hashable, run_batch: RunBatch, argument: Any) -> Any:
        self.calls[index] = (key, run_batch, argument)
        self.yielded.release()
        self.turn[index].acquire()
        ok, answer = self.answers.pop(index)
        if not ok:
            raise answer
        return answer

    def answer_calls(self) -> None:
        """Run the waiting calls, one batch per key, in the order their first caller came."""
        groups: dict[Hashable, list[int]] = {}
        for index in sorted(self.calls):
            groups.setdefault(self.calls[index][0], []).append(index)
        for indices in groups.values():
            run_batch = self.calls[indices[0]][1]
            try:
                with torch.no_grad():
                    found = run_batch([self.calls[i][2] for i in indices])
                outcomes = [(True, answer) for answer in found]
            except Exception as error:  # every caller of the batch raises it
                outcomes = [(False, error)] * len(indices)
            for index, outcome in zip(indices, outcomes, strict=True):
                self.answers[index] = outcome
        self.calls.clear()


def run_replicas(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, the tasks (one replica's evaluation each) run as described in the
    module's docstring; the first task's exception (in replica order), if any, is raised
    once every task has ended. One task runs here, directly."""
    if len(tasks) == 1:
        return [tasks[0]()]
    rendezvous = _Rendezvous(len(tasks))
    outcomes: list[tuple[bool, Any] | None] = [None] * len(tasks)
    # Thread-local in torch, so copied: grad mode (a new thread starts enabled) and the
    # current CUDA device (a new thread starts on device 0).
    grad_enabled = torch.is_grad_enabled()
    cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def replica(index: int) -> None:
        rendezvous.turn[index].acquire()
        _seat.rendezvous, _seat.index = rendezvous, index
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            with torch.set_grad_enabled(grad_enabled):
                outcomes[index] = (True, tasks[index]())
        except BaseException as error:
            outcomes[index] = (False, error)
        finally:
            _seat.rendezvous = None
            rendezvous.yielded.release()

    threads = [
        threading.Thread(target=replica, args=(i,), name=f"replica-{i}", daemon=True)
        for i in range(len(tasks))
    ]
    for thread in threads:
        thread.start()
    running = list(range(len(tasks)))
    while running:
        for index in running:  # each runs until it waits at `batched` or ends
            rendezvous.turn[index].release()
            rendezvous.yielded.acquire()
        running = [i for i in running if outcomes[i] is None]
        rendezvous.answer_calls()
    for thread in threads:
        thread.join()
    for ok, value in outcomes:  # type: ignore[misc]
        if not ok:
            raise value
    return [value for _, value in outcomes]  # type: ignore[misc]
