"""Section a, second comparison: ours against a loop that trains the way each family's
public reference implementation trains, in seconds per MNIST epoch.

The loops below are written for this bench. Each imitates one reference's training, at its
batch size and layer sizes and with the Python it runs per batch; ours trains the same
family at that batch size and those sizes (our model and step otherwise as they are), so
both do the same work per epoch. Speed is what is measured, not what the loops learn.

- mlvae, after ananyahjha93/multi-level-vae (PyTorch): a torchvision-style dataset (PIL
  image and `ToTensor` per sample) through a shuffling DataLoader of 256, wrapped in
  `itertools.cycle` as there, so after the first pass the cached batches are replayed and
  no loading is paid. Per batch: a copy into a preallocated input, the encoder, the
  group evidence accumulated over the batch's labels in Python loops over the samples (an
  `.item()` per label, precisions summed per row into dicts, rows written one by one into
  new tensors), the class code drawn per group and written row by row, three `.backward()`
  calls, one Adam step, and per step a log line opened and appended plus three scalars
  written, each read to the host. Like the reference it accumulates on detached class
  means and variances: its backward never runs through those loops.
- aae, after hrenski/Adversarial-Autoencoder-Experimients (notebook aae_minst_2dGauss):
  the same dataset through a shuffling DataLoader of 128 under a tqdm bar; per batch one
  encoder pass, prior samples drawn with numpy and made a tensor, label tensors made, the
  discriminator on codes and on prior samples, a discriminator loss backward with the
  graph kept, then reconstruction plus generator loss backward, three Adam optimisers,
  four `.item()` reads. Current torch refuses a backward through weights an optimiser
  step has changed in place, so the discriminator steps after the second backward, which
  is limited to the encoder and decoder (the reference's discriminator never learns from
  that one either; skipping its three small weight gradients is the only work left out).
- icvae, after dcmoyer/invariance-tutorial (Keras, here in torch): the whole training set
  as numpy arrays with one-hot labels; per epoch an index permutation drawn with numpy,
  then per batch numpy slices made tensors, forward, backward, torch's default Adam, and
  the loss read to the host for a progress line, as Keras's `fit` does. The loss terms are
  ours (`trainables.losses`), so the maths costs what ours costs.

Batch sizes differ between families because each reference chose its own: 256 for the
ML-VAE, 128 for the AAE, and Keras's default of 32 for the ICVAE tutorial, which passes no
batch size to `fit`. At 32 an epoch has eight times the steps it has at 256, so per-step
overhead weighs most there.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tests.bench.common import spread, subset, timed, uint8_images
from tests.bench.throughput import ImageArrayDataset, StepCounter
from trainables import Dataset, Experiment, get_family
from trainables.losses import kl_to_standard_normal, marginal_kl_bound, squared_error

TARGET_SPEEDUP = 4.0  # reference loop / ours, seconds per MNIST epoch
MNIST_EPOCH = 60_000  # training samples in one MNIST epoch


@dataclass
class Sizes:
    steps: int  # batches per timed epoch, at each family's reference batch size
    warm_steps: int
    repeats: int  # timed epochs of each loop, interleaved; the best counts


FULL = Sizes(steps=80, warm_steps=10, repeats=4)
QUICK = Sizes(steps=6, warm_steps=2, repeats=2)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _flat_pixels(images: np.ndarray) -> int:
    return int(np.prod(images.shape[1:]))


# --- ML-VAE ----------------------------------------------------------------------------
class _MLVAEEncoder(nn.Module):
    def __init__(self, n_pixels: int, hidden: int, style_dim: int, class_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_pixels, hidden), nn.Tanh())
        self.style_mu = nn.Linear(hidden, style_dim)
        self.style_logvar = nn.Linear(hidden, style_dim)
        self.class_mu = nn.Linear(hidden, class_dim)
        self.class_logvar = nn.Linear(hidden, class_dim)

    def forward(self, x: torch.Tensor):
        h = self.trunk(x.flatten(1))
        return self.style_mu(h), self.style_logvar(h), self.class_mu(h), self.class_logvar(h)


class _MLVAEDecoder(nn.Module):
    def __init__(self, code_dim: int, hidden: int, image_shape: tuple[int, ...]):
        super().__init__()
        self.image_shape = image_shape
        n_pixels = int(np.prod(image_shape))
        self.net = nn.Sequential(
            nn.Linear(code_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_pixels), nn.Sigmoid()
        )

    def forward(self, style: torch.Tensor, class_code: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([style, class_code], dim=1)).view(-1, 1, *self.image_shape)


def group_evidence_by_rows(mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor):
    """Each sample's group Gaussian (the product of those of the samples sharing its
    label), the slow way: Python passes over the samples with a dict per label, then the
    rows written one at a time. `mu` and `logvar` come detached; the results are new
    leaves that take gradient, so the class KL stops at them."""
    var = logvar.exp()
    inverse_sums: dict[int, torch.Tensor] = {}
    for i in range(len(labels)):
        label = labels[i].item()
        row = var[i]
        row[row == 0] = 1e-6  # a variance of zero would divide by zero below
        if label in inverse_sums:
            inverse_sums[label] += 1 / row
        else:
            inverse_sums[label] = 1 / row
    group_var = {label: 1 / total for label, total in inverse_sums.items()}
    weighted: dict[int, torch.Tensor] = {}
    for i in range(len(labels)):
        label = labels[i].item()
        if label in weighted:
            weighted[label] += mu[i] * (1 / var[i])
        else:
            weighted[label] = mu[i] * (1 / var[i])
    group_mu = {label: total * group_var[label] for label, total in weighted.items()}
    rows_mu, rows_var = torch.empty_like(mu), torch.empty_like(var)
    for i in range(len(labels)):
        label = labels[i].item()
        rows_mu[i] = group_mu[label]
        rows_var[i] = group_var[label]
        row = rows_var[i]
        row[row == 0] = 1e-6
    return rows_mu.requires_grad_(), rows_var.log().requires_grad_()


def class_codes_by_rows(
    mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, noise_std: float
) -> torch.Tensor:
    """One noise vector per distinct label, applied to each sample's row in a Python loop."""
    noise = {
        int(label): torch.empty(mu.shape[1], device=mu.device).normal_(0.0, noise_std)
        for label in torch.unique(labels)
    }
    std = logvar.mul(0.5).exp()
    codes = std.new_empty(std.shape)
    for i in range(len(labels)):
        codes[i] = std[i] * noise[labels[i].item()]
        codes[i].add_(mu[i])
    return codes


class MLVAELoop:
    """Trains like ananyahjha93/multi-level-vae's training procedure (see the module)."""

    batch_size = 256
    hidden, style_dim, class_dim, noise_std, lr = 500, 10, 10, 0.1, 1e-3
    progress_every = 50

    def __init__(self, images: np.ndarray, labels: np.ndarray, device, workdir: Path, seed=0):
        self.device = torch.device(device)
        n_pixels, image_shape = _flat_pixels(images), images.shape[1:]
        codes = self.style_dim + self.class_dim
        self.encoder, self.decoder = _seeded(
            seed,
            lambda: (
                _MLVAEEncoder(n_pixels, self.hidden, self.style_dim, self.class_dim),
                _MLVAEDecoder(codes, self.hidden, image_shape),
            ),
        )
        self.encoder.to(self.device)
        self.decoder.to(self.device)
        parameters = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.optimizer = torch.optim.Adam(parameters, lr=self.lr)
        self.inputs = torch.empty(self.batch_size, 1, *image_shape, device=self.device)
        loader = DataLoader(
            ImageArrayDataset(images, labels),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=0,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )
        self.batches = itertools.cycle(loader)  # replays the first pass's batches
        self.iterations = len(images) // self.batch_size
        self.log_path = workdir / "mlvae-log.txt"
        self.log_path.write_text("epoch\titeration\trecon\tstyle_kl\tclass_kl\n")
        self.scalars = open(workdir / "mlvae-scalars.txt", "w")  # noqa: SIM115 - a writer's life
        self.progress = open(workdir / "mlvae-progress.txt", "w")  # noqa: SIM115
        self.epoch_number = 0

    def epoch(self, limit: int | None = None) -> int:
        n = self.iterations if limit is None else limit
        for iteration in range(n):
            self.train_batch(iteration)
        self.epoch_number += 1
        return n

    def train_batch(self, iteration: int) -> None:
        images, labels = next(self.batches)
        self.optimizer.zero_grad()
        self.inputs.copy_(images)
        x = self.inputs
        style_mu, style_logvar, class_mu, class_logvar = self.encoder(x)
        group_mu, group_logvar = group_evidence_by_rows(
            class_mu.detach(), class_logvar.detach(), labels
        )
        # The KL terms per pixel of the batch, each with its own backward.
        per = x.numel()
        style_kl = -0.5 * torch.sum(1 + style_logvar - style_mu.pow(2) - style_logvar.exp())
        style_kl = style_kl / per
        style_kl.backward(retain_graph=True)
        class_kl = -0.5 * torch.sum(1 + group_logvar - group_mu.pow(2) - group_logvar.exp())
        class_kl = class_kl / per
        class_kl.backward(retain_graph=True)
        style = style_mu + torch.randn_like(style_mu) * style_logvar.mul(0.5).exp()
        class_code = class_codes_by_rows(group_mu, group_logvar, labels, self.noise_std)
        recon = torch.sum((self.decoder(style, class_code) - x).pow(2)) / x.numel()
        recon.backward()
        self.optimizer.step()
        self._record(iteration, recon, style_kl, class_kl)

    def _record(self, iteration: int, recon, style_kl, class_kl) -> None:
        """Per step: a log line (the file reopened to append) and three scalars, every
        figure read to the host where it is written."""
        terms = (("recon", recon), ("style_kl", style_kl), ("class_kl", class_kl))
        if (iteration + 1) % self.progress_every == 0:
            for name, value in terms:
                self.progress.write(
                    f"epoch {self.epoch_number} step {iteration} {name} {value.item()}\n"
                )
        with open(self.log_path, "a") as log:
            figures = "\t".join(str(value.item()) for _, value in terms)
            log.write(f"{self.epoch_number}\t{iteration}\t{figures}\n")
        step = self.epoch_number * (self.iterations + 1) + iteration
        for name, value in terms:
            self.scalars.write(f"{name}\t{step}\t{value.item()}\n")

    def close(self) -> None:
        self.scalars.close()
        self.progress.close()


# --- AAE -------------------------------------------------------------------------------
class AAELoop:
    """Trains like hrenski's aae_minst_2dGauss notebook (see the module)."""

    batch_size = 128
    z_dim, disc_width, adv_weight, lr = 2, 128, 0.1, 1e-3

    def __init__(self, images: np.ndarray, labels: np.ndarray, device, workdir: Path, seed=0):
        self.device = torch.device(device)
        n_pixels = _flat_pixels(images)
        self.image_shape = images.shape[1:]
        z, w = self.z_dim, self.disc_width

        def build():
            encoder = nn.Sequential(
                nn.Linear(n_pixels, 256),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(256, 64),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(64, z),
            )
            decoder = nn.Sequential(
                nn.Linear(z, 64),
                nn.ReLU(inplace=True),
                nn.Linear(64, 256),
                nn.ReLU(inplace=True),
                nn.Linear(256, n_pixels),
                nn.Sigmoid(),
            )
            critic = nn.Sequential(
                nn.Linear(z, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1)
            )
            return encoder, decoder, critic

        self.encoder, self.decoder, self.discriminator = (
            m.to(self.device) for m in _seeded(seed, build)
        )
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr)
        self.decoder_opt = torch.optim.Adam(self.decoder.parameters(), lr=self.lr)
        self.discriminator_opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr)
        self.autoencoder_params = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.loader = DataLoader(
            ImageArrayDataset(images, labels),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        self.numpy_rng = np.random.RandomState(seed)
        self.bar_file = open(workdir / "aae-progress.txt", "w")  # noqa: SIM115 - the bar's life
        self.epoch_number = 0

    def _bar(self):
        from tqdm import tqdm

        return tqdm(
            self.loader,
            miniters=10,
            leave=True,
            ncols=100,
            file=self.bar_file,
            bar_format="{postfix[0][epoch]:03d} {bar} {n_fmt}/{total_fmt} "
            "[{elapsed}<{remaining}, {rate_inv_fmt}] recon {postfix[0][recon]:.4e} "
            "disc {postfix[0][disc]:.4e}",
            postfix=[{"epoch": self.epoch_number, "recon": 0.0, "disc": 0.0}],
        )

    def epoch(self, limit: int | None = None) -> int:
        bar = self._bar()
        totals = np.zeros(2, dtype=np.float32)
        n = 0
        for n, (images, _) in enumerate(bar, start=1):
            recon_loss, disc_loss = self.train_batch(images)
            size = len(images)
            totals += (recon_loss.item() * size, disc_loss.item() * size)
            bar.postfix[0]["recon"] = recon_loss.item()
            bar.postfix[0]["disc"] = disc_loss.item()
            if limit is not None and n >= limit:
                break
        bar.close()
        self.epoch_number += 1
        return n

    def train_batch(self, images: torch.Tensor):
        size = len(images)
        x = images.to(self.device).view(size, -1)
        codes = self.encoder(x)
        prior = torch.tensor(
            self.numpy_rng.standard_normal(size * self.z_dim).reshape(size, self.z_dim),
            dtype=torch.float32,
            requires_grad=True,
            device=self.device,
        )
        real = torch.ones(size, 1, device=self.device)
        fake = torch.zeros(size, 1, device=self.device)
        judged_codes = self.discriminator(codes)
        judged_prior = self.discriminator(prior)
        decoded = self.decoder(codes)

        self.discriminator_opt.zero_grad()
        disc_loss = self.adv_weight * (
            F.binary_cross_entropy_with_logits(judged_prior, real)
            + F.binary_cross_entropy_with_logits(judged_codes, fake)
        )
        disc_loss.backward(retain_graph=True)

        self.encoder_opt.zero_grad()
        self.decoder_opt.zero_grad()
        recon_loss = F.mse_loss(decoded, x) + self.adv_weight * F.binary_cross_entropy_with_logits(
            judged_codes, real
        )
        recon_loss.backward(inputs=self.autoencoder_params)
        self.discriminator_opt.step()
        self.encoder_opt.step()
        self.decoder_opt.step()
        return recon_loss, disc_loss

    def close(self) -> None:
        self.bar_file.close()


# --- ICVAE -----------------------------------------------------------------------------
class _ICVAENet(nn.Module):
    def __init__(self, n_pixels: int, n_classes: int, hidden: int, z_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(n_pixels, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.z_mean = nn.Sequential(nn.Linear(hidden, z_dim), nn.Tanh())
        self.z_logvar = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + n_classes, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, n_pixels),
        )

    def loss(self, x: torch.Tensor, c: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
        h = self.trunk(x)
        mu, logvar = self.z_mean(h), self.z_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x_hat = self.decoder(torch.cat([z, c], dim=1))
        per_sample = (
            (1 + lam) * squared_error(x_hat, x)
            + beta * kl_to_standard_normal(mu, logvar)
            + lam * marginal_kl_bound(mu, logvar)
        )
        return per_sample.mean()


class ICVAELoop:
    """Trains like the invariance tutorial's `model.fit` (see the module)."""

    batch_size = 32
    hidden, z_dim, beta, lam, lr = 512, 16, 0.1, 1.0, 5e-4
    n_classes = 10
    progress_interval = 0.05  # seconds between progress lines, as Keras's bar

    def __init__(self, images: np.ndarray, labels: np.ndarray, device, workdir: Path, seed=0):
        self.device = torch.device(device)
        n_pixels = _flat_pixels(images)
        self.x = images.reshape(len(images), n_pixels).astype(np.float32) / 255.0
        self.c = np.eye(self.n_classes, dtype=np.float32)[labels]
        self.model = _seeded(
            seed, lambda: _ICVAENet(n_pixels, self.n_classes, self.hidden, self.z_dim)
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.numpy_rng = np.random.RandomState(seed)
        self.progress = open(workdir / "icvae-progress.txt", "w")  # noqa: SIM115 - the bar's life

    def epoch(self, limit: int | None = None) -> int:
        order = self.numpy_rng.permutation(len(self.x))
        n_batches = -(-len(order) // self.batch_size)
        if limit is not None:
            n_batches = min(n_batches, limit)
        mean_loss, last_shown = 0.0, 0.0
        for b in range(n_batches):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = torch.from_numpy(self.x[rows]).to(self.device)
            c = torch.from_numpy(self.c[rows]).to(self.device)
            loss = self.model.loss(x, c, self.beta, self.lam)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            mean_loss += (loss.item() - mean_loss) / (b + 1)
            now = time.perf_counter()
            if now - last_shown >= self.progress_interval or b == n_batches - 1:
                self.progress.write(f"\r{b + 1}/{n_batches} - loss: {mean_loss:.4f}")
                last_shown = now
        self.progress.write("\n")
        return n_batches

    def close(self) -> None:
        self.progress.close()


# --- the comparison --------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A public reference implementation: where it is, how it is imitated, and the sizes
    that give ours its layer sizes and batch size."""

    source: str
    loop: type
    sizes: dict[str, Any]

    @property
    def batch_size(self) -> int:
        return self.loop.batch_size


REFERENCES = {
    "mlvae": Reference(
        "ananyahjha93/multi-level-vae",
        MLVAELoop,
        {"hidden": [500], "style_dim": 10, "class_dim": 10},
    ),
    "aae": Reference(
        "hrenski/Adversarial-Autoencoder-Experimients, aae_minst_2dGauss",
        AAELoop,
        {"hidden": [256, 64], "z_dim": 2, "disc_width": 128},
    ),
    "icvae": Reference(
        "dcmoyer/invariance-tutorial (Keras fit, imitated in torch)",
        ICVAELoop,
        {"hidden": [512, 512], "z_dim": 16},
    ),
}


def our_config(family: str) -> dict[str, Any]:
    """The family's reference config at the reference implementation's batch and sizes."""
    ref = REFERENCES[family]
    return {
        **get_family(family).reference_config,
        **ref.sizes,
        "batch_size": ref.batch_size,
    }


def per_epoch(seconds: float, batches: int, batch_size: int) -> float:
    """Seconds for one MNIST epoch, scaled from `batches` batches of `batch_size`."""
    return seconds / (batches * batch_size) * MNIST_EPOCH


def bench_family(
    family: str, dataset: Dataset, device: torch.device, sizes: Sizes, workdir: Path
) -> dict[str, Any]:
    ref = REFERENCES[family]
    batch = ref.batch_size
    data = subset(dataset, sizes.steps * batch)
    images, labels = uint8_images(data)
    experiment = Experiment.create(family, our_config(family), data, seed=0, use_reference=False)
    counter = StepCounter(next(iter(experiment.optimizers.values())))
    loop = ref.loop(images, labels, device, workdir)
    try:
        # Warm-up: first-call costs, allocator, thread pools; on CUDA our step's capture.
        loop.epoch(limit=sizes.warm_steps)
        experiment.train_epoch()
        ref_times, ours_times, ref_batches, ours_batches = [], [], 0, 0
        for _ in range(sizes.repeats):
            seconds, ref_batches = timed(loop.epoch, device)
            ref_times.append(seconds)
            counter.n = 0
            ours_times.append(timed(experiment.train_epoch, device)[0])
            ours_batches = counter.n
    finally:
        loop.close()
    ref_epoch = per_epoch(min(ref_times), ref_batches, batch)
    ours_epoch = per_epoch(min(ours_times), ours_batches, batch)
    return {
        "device": str(device),
        "reference": ref.source,
        "batch_size": batch,
        "config": our_config(family),
        "reference_batches_timed": ref_batches,
        "ours_batches_timed": ours_batches,
        "reference_epoch_s": ref_epoch,
        "ours_epoch_s": ours_epoch,
        "speedup": ref_epoch / ours_epoch,
        "reference_seconds_all": ref_times,
        "ours_seconds_all": ours_times,
        "reference_spread": spread(ref_times),
        "ours_spread": spread(ours_times),
    }


def run(
    dataset: Dataset, device: torch.device, sizes: Sizes, log=print
) -> dict[str, dict[str, Any]]:
    results = {}
    on_device = dataset.to(device)
    with tempfile.TemporaryDirectory(prefix="bench-reference-loops-") as workdir:
        for family, ref in REFERENCES.items():
            log(
                f"  [{device}] {family} vs {ref.source}: {sizes.steps} batches of "
                f"{ref.batch_size} x {sizes.repeats} repeats ..."
            )
            results[family] = bench_family(family, on_device, device, sizes, Path(workdir))
    return results
