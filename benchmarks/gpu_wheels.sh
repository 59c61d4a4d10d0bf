#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu.sh installs on a GPU machine whose
# Python 3.12 has jax (CUDA), flax, optax, orbax and torch but not segjax's data stack (the
# device machines of this project: see docs/performance.md). Run here, with PyPI reachable;
# .whl/ is git-ignored: the wheels never get committed (name .whl in the device carry).
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  ml_collections tensorflow-datasets grain array-record segmentation-models-pytorch \
  simple-parsing dm-tree immutabledict promise toml docstring-parser pretrainedmodels \
  efficientnet-pytorch
ls .whl
