#!/usr/bin/env bash
# Packs what a lent GPU machine lacks for `tests/bench/device_check.sh`: that machine has
# Python 3.12 with torch, torchvision, numpy, scikit-learn and pandas, but no registry, so
# Ray, Optuna and MLflow (cp312 wheels, the versions of our .venv) travel as one archive,
# and MNIST as a copy. Run here, from the repository root; both land in ignored folders.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=.devsite site=/tmp/latent-site312
mkdir -p "$bundle" .devdata
grep -qx '/.devsite/' .git/info/exclude || printf '/.devsite/\n/.devdata/\n' >>.git/info/exclude
# Our packages that the GPU image does not carry (its list: the device tool's KINDS.md).
wanted=(alembic annotated-types blinker cachetools cffi colorlog cryptography databricks-sdk
  docker fastapi flask flask-cors gitdb gitpython google-auth graphene graphql-core
  graphql-relay gunicorn huey importlib-metadata itsdangerous jsonschema
  jsonschema-specifications mako mlflow mlflow-skinny mlflow-tracing opentelemetry-api
  opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions optuna
  prettytable pyasn1 pyasn1-modules pycparser pydantic pydantic-core python-dotenv ray
  referencing rpds-py skops smmap sqlalchemy sqlparse starlette tensorboardx
  typing-inspection uvicorn wcwidth)
pins=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-')
requirements=()
for name in "${wanted[@]}"; do
  requirements+=("$(grep -m1 "^${name}==" <<<"$pins")")
done
rm -rf "$site"
python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --target "$site" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 "${requirements[@]}"
# Under the tool's 64 MiB: no Java, RLlib, Serve, LLM, UI bundles or debug symbols.
rm -rf "$site"/ray/{jars,rllib,serve,llm} "$site"/mlflow/server/js
find "$site" -name '*.map' -delete
find "$site" -name __pycache__ -prune -exec rm -rf {} +
strip --strip-unneeded "$site"/ray/_raylet.so "$site"/ray/core/src/ray/gcs/gcs_server \
  "$site"/ray/core/src/ray/raylet/raylet
tar -cJf "$bundle/site312.tar.xz" -C "$(dirname "$site")" "$(basename "$site")"
rm -rf .devdata/mnist && cp -r ../shared/data/mnist .devdata/mnist
du -sh "$bundle/site312.tar.xz" .devdata/mnist
