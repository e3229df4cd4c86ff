"""Compose the README's reproduction figures from `study train --preset` outputs.

    python docs/reproductions/compose.py runs/presets   # after running the presets with
                                                        # --out runs/presets/<preset>

Each figure sets seed 0's image grids of a few variants side by side, titled with the
variant and its mean over seeds from the preset's summary.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
# figure name -> (preset, image, metric for the title, [(variant directory, title)])
PANELS = {
    "mlvae-swaps": (
        "mlvae-reference",
        "swaps",
        "swap_acc",
        [
            (
                "noise_std=0.1-freeze_class_heads=false-recon_loss=mse",
                "trained heads, squared error",
            ),
            (
                "noise_std=0.1-freeze_class_heads=false-recon_loss=bernoulli",
                "trained heads, Bernoulli",
            ),
            (
                "noise_std=0.1-freeze_class_heads=true-recon_loss=mse",
                "frozen heads (the reference)",
            ),
        ],
    ),
    "icvae-remapping": (
        "icvae-tutorial",
        "swaps",
        "leakage_acc_mlp",
        [("lam=0.0", "lam 0"), ("lam=1.0", "lam 1 (the tutorial's)"), ("lam=10.0", "lam 10")],
    ),
    "aae-scatter": (
        "aae-priors",
        "latent_scatter",
        "prior_mmd",
        [("gaussian", "Gaussian"), ("mixture", "mixture"), ("mixture_labels", "mixture + labels")],
    ),
    "aae-manifold": (
        "aae-priors",
        "manifold",
        "recon_mse",
        [("gaussian", "Gaussian"), ("mixture", "mixture"), ("mixture_labels", "mixture + labels")],
    ),
}
# Figures the presets draw themselves, copied as they are.
COPIED = {
    "mlvae-balance-heatmap": ("mlvae-balance", "heatmap-swap_acc.png"),
    "mlvae-dims-heatmap": ("mlvae-dims", "heatmap-swap_acc.png"),
    "icvae-pareto": ("icvae-tutorial", "pareto-recon_mse-leakage_acc.png"),
}


def compose(runs: Path, name: str) -> None:
    preset, image, metric, variants = PANELS[name]
    summary = json.loads((runs / preset / "summary.json").read_text())
    means = {v["name"]: v["metrics"].get(metric, {}).get("mean") for v in summary["variants"]}
    by_dir = {v["name"].replace(",", "-").replace("+", "_"): v["name"] for v in summary["variants"]}
    figure, axes = plt.subplots(1, len(variants), figsize=(3.0 * len(variants), 3.4), dpi=80)
    for axis, (directory, title) in zip(axes, variants, strict=True):
        picture = mpimg.imread(runs / preset / directory / "seed0" / "images" / f"{image}.png")
        axis.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0)
        mean = means.get(by_dir.get(directory, directory))
        axis.set_title(f"{title}\n{metric} {mean:.2f}" if mean is not None else title, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(HERE / f"{name}.png", bbox_inches="tight")
    plt.close(figure)


def main(runs: Path) -> None:
    for name in PANELS:
        compose(runs, name)
    for name, (preset, file) in COPIED.items():
        shutil.copy(runs / preset / file, HERE / f"{name}.png")
    for summary in runs.glob("*/summary.md"):
        shutil.copy(summary, HERE / f"{summary.parent.name}.md")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/presets"))
