"""Optuna's samplers in a form Ray Tune can save.

Ray pickles the searcher, sampler included, when the Tuner is made (tuner.pkl) and at
every experiment save (`study resume` restores from it). Since Optuna 5.1 the genetic
samplers (NSGA-II among them) keep a `threading.Lock` around their generation cache, and
pickle refuses locks: every sweep with two or more objectives died inside `tune.Tuner`.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

# The lock attribute of Optuna's genetic samplers (optuna/samplers/_ga/_base.py, 5.1).
_LOCK = "_thread_lock"


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, picklable on every Optuna release.

    The lock only serialises threads of one process over a cache that the sampler rebuilds
    from the study's trials, so an unpickled sampler gets a fresh lock and the cache as it
    was. The class keeps Optuna's name on purpose: the genetic samplers derive the keys they
    store in each trial ("NSGAIISampler:generation") from the class name, so a study this
    sampler runs reads like one Optuna's own ran, and either can resume it.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if _LOCK in state:
            state[_LOCK] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _LOCK in state:
            setattr(self, _LOCK, threading.Lock())


def sampler_class(objectives: int) -> type[optuna.samplers.BaseSampler]:
    """TPE for one objective; NSGA-II when there are several."""
    return optuna.samplers.TPESampler if objectives == 1 else NSGAIISampler
