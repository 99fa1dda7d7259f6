# syntax=docker/dockerfile:1
# The HTTP API: `pip install .` installs the API only (no torch, no diffusers), so this image is
# small and starts in about a second. Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t sdedit-api .
# Settings: the SDEDIT_* environment variables of the README (at least SDEDIT_REDIS_URL and
# SDEDIT_API_KEYS).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
COPY . /src
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sdedit sdedit
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/sdedit-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SDEDIT_HOST=0.0.0.0 \
    SDEDIT_PORT=8000
USER 10001:10001
WORKDIR /home/sdedit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/bin/sdedit-healthcheck", "api"]
CMD ["sdedit", "api"]
