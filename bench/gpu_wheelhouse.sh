#!/usr/bin/env bash
# Wheels of what the device machine's image lacks (diffusers, pydantic and its parts), for
# Python 3.12 on x86-64, into .gpu-wheels/ (ignored by git, carried by the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels
TARGET=(--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64)
# pydantic pins its pydantic-core: resolved together. diffusers' own dependencies are on the
# image (huggingface_hub, numpy, pillow, regex, requests, safetensors) except importlib-metadata.
.venv/bin/pip download --quiet --dest .gpu-wheels "${TARGET[@]}" "pydantic>=2.6" \
    "pydantic-settings>=2.2"
.venv/bin/pip download --quiet --dest .gpu-wheels "${TARGET[@]}" --no-deps "diffusers>=0.30,<1" \
    importlib-metadata
ls .gpu-wheels
