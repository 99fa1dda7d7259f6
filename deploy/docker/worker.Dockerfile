# syntax=docker/dockerfile:1
# A worker: torch, diffusers and the models (`pip install '.[worker]'`). Build from the
# repository root.
#   GPU (default): a CUDA PyTorch base; torch comes with it.
#     docker build -f deploy/docker/worker.Dockerfile -t sdedit-worker .
#   CPU: a plain Python base and PyTorch's CPU wheels.
#     docker build -f deploy/docker/worker.Dockerfile -t sdedit-worker-cpu \
#       --build-arg BASE_IMAGE=python:3.11-slim \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Settings: the SDEDIT_* environment variables of the README (at least SDEDIT_REDIS_URL).
# On SIGTERM the worker stops taking jobs and finishes the running ones: give it a stop grace
# period of at least SDEDIT_JOB_TIMEOUT_S.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=

COPY . /src
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir torch --index-url "$TORCH_INDEX_URL"; \
    fi \
    && pip install --no-cache-dir "/src[worker]" \
    && rm -rf /src
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sdedit sdedit \
    && mkdir -p /home/sdedit/.cache/huggingface && chown -R sdedit:sdedit /home/sdedit/.cache
COPY deploy/docker/healthcheck.py /usr/local/bin/sdedit-healthcheck
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/home/sdedit/.cache/huggingface \
    SDEDIT_METRICS_PORT=9100
USER 10001:10001
WORKDIR /home/sdedit
EXPOSE 9100
# Healthy once the models are loaded (the metrics endpoint says so).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/usr/local/bin/sdedit-healthcheck", "worker"]
CMD ["sdedit", "worker"]
