#!/bin/sh
# The wheels that benchmarks/gpu_check.py needs on a GPU machine without network
# (python3 3.12 with torch, but no torchreid, yacs, gdown or their dependencies):
# downloaded here into .whl/, they travel with the working tree. See benchmarks/README.md.
set -e
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .whl yacs gdown beautifulsoup4 soupsieve
# torchreid is published as an sdist only: built here into a pure-Python wheel
python3 -m pip wheel --no-deps -w .whl torchreid==0.2.5
ls .whl
