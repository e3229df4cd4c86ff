"""The `study` command with one piece of its sweep broken on purpose, for the tests of what
an unexpected error leaves behind (test_reliability.py):

    python tests/broken_study.py WHERE ARGS...   # as `study ARGS...`

WHERE is where the sweep breaks, from the earliest:
  pickle  the searcher holds a lock, so Tune cannot pickle it into tuner.pkl (as Optuna
          5.1's NSGA-II sampler could not): after the parent run and the spec exist,
          before Tune runs anything
  add     the scheduler fails when Tune adds the first trial: inside Tune's loop, after
          Optuna made its study for the first suggestion, before the trial starts
  result  the scheduler fails at the first result, after the trial started and reported

The broken pieces live in this script (__main__), so Tune pickles them by value with the
Tuner; a `result` scheduler restored by `study resume` (another process) works.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading

from ray.tune.schedulers import FIFOScheduler


class BrokenScheduler(FIFOScheduler):
    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.pid = os.getpid()

    def on_trial_add(self, tune_controller, trial):
        if self.where == "add":
            raise RuntimeError("the scheduler broke adding the first trial")
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if self.where == "result" and os.getpid() == self.pid:
            raise RuntimeError("the scheduler broke at the first result")
        return super().on_trial_result(tune_controller, trial, result)


def broken_plan_search(where: str):
    from study import plan

    plan_search = plan.plan_search

    def broken(spec, verbose=False):
        found = plan_search(spec, verbose)
        if where == "pickle":
            found.search_alg.lock = threading.Lock()
            return found
        return dataclasses.replace(found, scheduler=BrokenScheduler(where))

    return broken


if __name__ == "__main__":
    from study import plan
    from study.cli import main

    where, args = sys.argv[1], sys.argv[2:]
    assert where in ("pickle", "add", "result"), where
    plan.plan_search = broken_plan_search(where)  # the CLI imports it when it runs
    sys.argv = ["study", *args]
    main()
