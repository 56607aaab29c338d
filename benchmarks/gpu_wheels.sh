#!/usr/bin/env bash
# Fill .whl/ with the wheels of the project's runtime dependencies that the lent GPU machine's
# image lacks (it has torch, transformers, peft, tokenizers, tensorboard, nvidia-ml-py, ...; see
# the device notes), for its Python 3.12 on x86-64. Run it where pip reaches PyPI; then carry .whl
# to the device, where benchmarks/gpu_check.sh installs them offline into a temporary directory.
# The versions are those the test suite runs with, except polars: 1.33.1 is one 40 MB wheel, where
# 2.x needs a 54 MB runtime wheel that would not fit the 64 MiB a device call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 polars==1.33.1 simplejpeg==1.9.0 \
  google-crc32c==1.9.0 lz4==4.4.5 backports.zstd==1.8.0
du -sh .whl
