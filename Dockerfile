# lipsync-server: one image for the API (`lipsync api`) and the workers (`lipsync worker`).
#
#   docker build -t lipsync-server .                                          # CUDA torch (GPU hosts)
#   docker build -t lipsync-server:cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .      # CPU torch, a much smaller image
#
# Build arguments:
#   BASE_IMAGE       any Debian-like image with python3.11 on PATH. No CUDA base: torch's CUDA wheels bring
#                    their own CUDA runtime (the nvidia-* wheels), and the NVIDIA Container Toolkit mounts
#                    the host's driver, so a CUDA base would ship those libraries twice.
#   TORCH_VERSION    the project's pin (pyproject.toml's model extra).
#   TORCH_INDEX_URL  where torch comes from: PyTorch's CUDA index (cu128: CUDA 12.8, which the host's driver
#                    must support; `nvidia-smi` shows it) or .../whl/cpu.
#   INDEX_URL        where everything else comes from, when not pip's default index (deploy/requirements.txt
#                    pins every version).
# Configuration at run time: LIPSYNC_* environment variables only (docs/deploy.md).

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS deps

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG INDEX_URL=

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first and alone: the biggest layer, and the one the CPU and GPU images differ in.
RUN python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

# Then every other dependency, pinned, before any source: a source change reuses these layers.
# --no-deps + pip check: a requirement missing from the lock fails the build instead of floating.
COPY deploy/requirements.txt /opt/requirements.txt
RUN pip install --no-deps ${INDEX_URL:+--index-url "$INDEX_URL"} -r /opt/requirements.txt && pip check

# The project as a wheel, built in its own stage: the image gets the installed package, not the source.
FROM deps AS wheel
COPY pyproject.toml README.md /src/
COPY lipsync /src/lipsync
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheel /src

FROM deps
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    LIPSYNC_STORAGE_DIR=/data/storage \
    LIPSYNC_WEIGHTS_DIR=/weights

COPY --from=wheel /wheel /tmp/wheel
# Smoke test, with no source tree anywhere: the installed `lipsync` starts, finds its model configs (package
# data) and builds a model, and both roles import.
WORKDIR /
RUN pip install --no-deps /tmp/wheel/*.whl && rm -rf /tmp/wheel \
    && lipsync --help > /dev/null \
    && python -c "import lipsync, lipsync.server.app, lipsync.worker.worker; assert '/site-packages/' in lipsync.__file__" \
    && lipsync weights random pipio /tmp/smoke && rm -rf /tmp/smoke

# Non-root. /data/storage: filesystem storage (a volume shared by the API and the workers); /weights: where
# workers mount the model weights (left empty, they run random weights and say so in every log). No VOLUME:
# the API would get an anonymous /weights volume of its own.
RUN useradd --create-home --uid 10001 --user-group lipsync \
    && mkdir -p /data/storage /weights \
    && chown -R lipsync:lipsync /data /weights

# The benchmark scripts (they need only the package): `python scripts/bench_gpu.py` runs in the image.
WORKDIR /app
COPY scripts ./scripts
COPY deploy/healthcheck.py /opt/lipsync/healthcheck.py
USER 10001:10001

# API: /readyz answers; worker: its liveness beat in Redis is current (deploy/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/opt/lipsync/healthcheck.py"]
EXPOSE 8000

ENTRYPOINT ["lipsync"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
