"""Model families, data and metrics: everything a trial computes, with no Ray or MLflow.

The names below load on first use, so `trainables.io` (YAML and directories) can be
imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DATASETS": "trainables.config",
    "Dataset": "trainables.data",
    "load_dataset": "trainables.data",
    "ConfigError": "trainables.errors",
    "ContractError": "trainables.errors",
    "DataError": "trainables.errors",
    "UserError": "trainables.errors",
    "Experiment": "trainables.experiment",
    "pick_device": "trainables.experiment",
    "Family": "trainables.family",
    "FamilyConfig": "trainables.family",
    "FamilyModel": "trainables.family",
    "Metric": "trainables.family",
    "Training": "trainables.family",
    "all_families": "trainables.registry",
    "get_family": "trainables.registry",
}

__all__ = [
    "DATASETS",
    "ConfigError",
    "ContractError",
    "DataError",
    "Dataset",
    "Experiment",
    "Family",
    "FamilyConfig",
    "FamilyModel",
    "Metric",
    "Training",
    "UserError",
    "all_families",
    "get_family",
    "load_dataset",
    "pick_device",
]

if TYPE_CHECKING:
    from trainables.config import DATASETS
    from trainables.data import Dataset, load_dataset
    from trainables.errors import ConfigError, ContractError, DataError, UserError
    from trainables.experiment import Experiment, pick_device
    from trainables.family import Family, FamilyConfig, FamilyModel, Metric, Training
    from trainables.registry import all_families, get_family


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
