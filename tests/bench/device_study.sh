#!/usr/bin/env bash
# A real MNIST ML-VAE study with its seed re-runs on a lent GPU machine, for the README's
# Robustness example: 30 trials x 10 epochs (four searched parameters, four quarter-GPU
# trials at a time), then `study robustness --top 3 --seeds 3 --neighbours`. The MLflow
# and Optuna stores come back as $1/mnist-study.tar.gz (packed by device_check.sh's next
# step, so also when this one runs out of time); unpack it at /tmp/mnist-study (the
# artifact paths in the store are absolute) and run `study report mnist-mlvae` there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$1 dir=/tmp/mnist-study
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
study() { python3 -m study.cli "$@"; }
study run mlvae --dataset mnist --data-dir "$repo/.devdata/mnist" --name mnist-mlvae \
  --trials 30 --epochs 10 --eval-every 5 --scheduler none --concurrency 4 --cpus-per-trial 3 \
  --gpus-per-trial 0.25 --set recon_loss=bernoulli --set style_dim=10 \
  --set group_size=16 --set lr=0.001
study robustness mnist-mlvae --top 3 --seeds 3 --neighbours
