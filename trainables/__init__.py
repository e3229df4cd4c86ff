"""Model families, data and metrics: everything a trial computes, with no Ray or MLflow."""

from trainables.data import DATASETS, Dataset, load_dataset
from trainables.errors import ConfigError, DataError, UserError
from trainables.experiment import Experiment, pick_device
from trainables.family import Family, FamilyConfig
from trainables.registry import all_families, get_family

__all__ = [
    "DATASETS",
    "ConfigError",
    "DataError",
    "Dataset",
    "Experiment",
    "Family",
    "FamilyConfig",
    "UserError",
    "all_families",
    "get_family",
    "load_dataset",
    "pick_device",
]
