# syntax=docker/dockerfile:1
# lipsync-server: one image for the API (`lipsync api`) and the GPU workers (`lipsync worker`).
#
#   docker build -t lipsync-server .                                   # CUDA torch (GPU hosts)
#   docker build -t lipsync-server:cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .  # CPU-only torch, a much smaller image
#
# Build arguments:
#   BASE_IMAGE       the CUDA runtime base. The NVIDIA container toolkit injects the host's driver; keep the
#                    CUDA version at or below what that driver supports (`nvidia-smi` shows it).
#   TORCH_VERSION    pinned, and installed FIRST: an unpinned torch requirement (accelerate's) would pull
#                    another build.
#   TORCH_INDEX_URL  where torch comes from: PyTorch's CUDA wheel index matching BASE_IMAGE's CUDA (cu128
#                    for CUDA 12.8), or .../whl/cpu for a CPU image.
# Configuration at run time: LIPSYNC_* environment variables only (see docs/deploy.md and compose.yaml).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (Ubuntu 22.04's universe), ffmpeg (the audio fallbacks use its CLI), tini-less: compose sets
# `init: true`. Versions float with the base image's release, on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates ffmpeg libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV"

# torch first, pinned, from the chosen index (its own layer: it is the big one and rarely changes).
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/constraints.txt

WORKDIR /app
COPY pyproject.toml README.md ./
# One import package (lipsync/: model configs and the playground are package data), and the benchmark scripts,
# which need nothing but the package (`python scripts/bench_gpu.py` runs inside the image).
COPY lipsync ./lipsync
COPY scripts ./scripts
# The project with the model extra; boto3 for LIPSYNC_STORAGE_BACKEND=s3. The constraint keeps the torch
# installed above (2.13.0+cuXXX satisfies ==2.13.0) instead of a PyPI build.
RUN pip install -c /opt/constraints.txt ".[model]" "boto3==1.44.5" \
    && python -c "import torch, lipsync.server.app, lipsync.worker.worker; print('torch', torch.__version__)"

# Non-root. /data holds filesystem storage (a volume shared by the API and the workers); /weights the
# model weights (mount them read-only; left empty, the worker runs random weights and says so in every log).
RUN useradd --create-home --uid 10001 --user-group lipsync \
    && mkdir -p /data/storage /weights \
    && chown -R lipsync:lipsync /data /weights
USER 10001:10001

ENV LIPSYNC_STORAGE_DIR=/data/storage \
    LIPSYNC_WEIGHTS_DIR=/weights

VOLUME ["/weights"]
EXPOSE 8000

ENTRYPOINT ["lipsync"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
