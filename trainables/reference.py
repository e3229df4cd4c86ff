"""A reference classifier per dataset, trained once on real images and cached on disk.

`swap_acc` asks it which class a decoded swap shows. It is trained with a fixed seed on the
training split; the cache key covers the dataset's contents and this module's recipe.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from trainables.config import dataset_label
from trainables.data import Dataset, cache_root, shuffled_batches

RECIPE_VERSION = 1
HIDDEN = 256
EPOCHS_FOR_SAMPLES = 300_000  # about 5 MNIST epochs, 200 digits epochs


def cache_dir() -> Path:
    return cache_root() / "reference"


def _fingerprint(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(
        f"{dataset.name}:{RECIPE_VERSION}:{HIDDEN}:{tuple(dataset.x_train.shape)}".encode()
    )
    # A strided sample of the pixels and all labels tells datasets of the same name apart.
    digest.update(dataset.x_train[::97].cpu().numpy().tobytes())
    digest.update(dataset.y_train.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_classifier(n_pixels: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_pixels, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_classes))


class ReferenceClassifier:
    def __init__(self, model: nn.Module, test_accuracy: float):
        self.model = model.eval()
        self.test_accuracy = test_accuracy

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(images.to(device)).argmax(dim=1).to(images.device)


def load_reference(dataset: Dataset) -> ReferenceClassifier:
    """The cached classifier for `dataset`, training and caching it on first use."""
    # The label, not the name: "npz:/data/x.npz" would be a path of folders.
    path = cache_dir() / f"{dataset_label(dataset.name)}-{_fingerprint(dataset)}.pt"
    with torch.random.fork_rng(devices=[]):  # building it must not move the caller's RNG
        model = build_classifier(dataset.n_pixels, dataset.n_classes)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state_dict"])
            return ReferenceClassifier(model.to(dataset.device), float(saved["test_accuracy"]))
        except Exception:  # noqa: BLE001 - a damaged cache file is retrained, not fatal
            pass
    model, accuracy = _train(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so trials racing to fill the cache never read half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save({"state_dict": model.state_dict(), "test_accuracy": accuracy}, handle)
    os.replace(handle.name, path)
    return ReferenceClassifier(model, accuracy)


@torch.enable_grad()  # callers may sit inside no_grad evaluation
def _train(dataset: Dataset) -> tuple[nn.Module, float]:
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier(dataset.n_pixels, dataset.n_classes).to(dataset.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(dataset.x_train)
    epochs = max(1, EPOCHS_FOR_SAMPLES // n)
    for _ in range(epochs):
        for index in shuffled_batches(n, 128, generator, dataset.device):
            loss = nn.functional.cross_entropy(
                model(dataset.x_train[index]), dataset.y_train[index]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(dataset.x_test).argmax(1) == dataset.y_test).float().mean().item()
    return model.eval(), accuracy
