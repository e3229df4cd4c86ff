#!/usr/bin/env bash
# The GPU checks in one call of a lent GPU machine (no CI machine has a GPU):
#   tests/bench/device_bundle.sh                      # here, once: packs what it lacks
#   bash tests/bench/device_check.sh                  # there, carrying .devsite and .devdata
# Each step has its own time limit; logs and JSON figures go to $OUT (or /tmp/device-out),
# and each step's tail is printed. STEPS picks steps (default: all, in this order);
# PYTEST_ARGS overrides the GPU tests run.
set -u
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/device-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=token
tar -xJf .devsite/site312.tar.xz -C /tmp
export PYTHONPATH=/tmp/latent-site312:$PWD

steps=" ${STEPS:-env pytest_gpu bench_abde bench_c bench_h} "  # also: study_mnist headline
step() {
  local name=$1 limit=$2 lines=$3 start=$SECONDS rc
  shift 3
  [[ $steps == *" $name "* ]] || return 0
  echo "=== $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  tail -n "$lines" "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >"$out/gpu.csv" 2>&1
cat "$out/gpu.csv"
step env 60 5 python3 -c "import torch, ray, optuna, mlflow, sklearn; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ray', ray.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__)"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
step pytest_gpu "${PYTEST_LIMIT:-130}" 25 python3 -m pytest -q -p no:cacheprovider -rs \
  ${PYTEST_ARGS:-tests/test_cuda_graphs.py tests/test_gpu.py tests/test_precision.py \
  tests/test_families.py::test_save_and_restore_on_cuda tests/test_probes.py tests/test_seeds.py}
step bench_abde "${BENCH_LIMIT:-200}" 50 python3 -m tests.bench.run --devices cuda --only abde \
  --data-dir .devdata/mnist --json "$out/bench-cuda.json"
step bench_c "${SWEEP_LIMIT:-150}" 22 python3 -m tests.bench.run --devices cuda --only c \
  --sweep-gpus 0.25 --json "$out/bench-c-cuda.json"
step bench_h "${SEEDS_LIMIT:-240}" 70 python3 -m tests.bench.run --devices cuda --only h \
  --data-dir .devdata/mnist --json "$out/bench-h-cuda.json"
step study_mnist "${STUDY_LIMIT:-420}" 30 bash tests/bench/device_study.sh "$out"
# Issue 24's headline study: 64 configs x 3 seeds x 20 epochs, ASHA, then the report (<= 10 min).
step headline "${HEADLINE_LIMIT:-600}" 30 python3 -m tests.bench.headline --gpus-per-trial 0.25 \
  --data-dir .devdata/mnist --out "$out/headline-cuda.json"
[[ $steps == *" study_mnist "* ]] && tar -czf "$out/mnist-study.tar.gz" -C /tmp/mnist-study \
  mlflow.db optuna.db mlruns
