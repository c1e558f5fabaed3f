# One image for every gradstore role: the API, the build workers and the migrations.
# The role is the command: `docker run IMAGE api --host 0.0.0.0`, `... worker`, `... db upgrade`.
#
# CPU (default):   docker build -t gradstore .
# GPU (CUDA 12.6): docker build -t gradstore \
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                    --build-arg GRADSTORE_EXTRAS=service,gpu .
#   The CUDA torch wheels carry their own CUDA libraries, so the slim base runs on a GPU host
#   with the NVIDIA container toolkit. A CUDA runtime base is the documented alternative
#   (system tools such as nvidia-smi, the distribution's CUDA libraries):
#                  --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# Offline-ish hosts: BASE_IMAGE may be any local Debian/Ubuntu image (Python is installed
# when it has none), WHEELS_URL a local wheel source pip searches first (docs/deployment.md).

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Wheel index and version of torch: CPU wheels unless told otherwise (an unpinned torch from
# PyPI would pull several GB of CUDA packages into a CPU image). An empty TORCH_INDEX_URL
# means PyPI plus WHEELS_URL.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# A directory of wheels (URL or path, pip's --find-links) searched before the indexes.
ARG WHEELS_URL=""
# Extras of the gradstore package: service plus exactly one FAISS wheel (cpu or gpu).
ARG GRADSTORE_EXTRAS=service,cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GRADSTORE_DATA_DIR=/data

# CUDA/Ubuntu/Debian bases have no Python; Python bases already do. A virtualenv either
# way, so pip never touches the distribution's packages (PEP 668).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip setuptools wheel

# torch first, in its own layer: it is the largest dependency and changes least often.
RUN pip install ${WHEELS_URL:+--find-links "$WHEELS_URL"} \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

# The other dependencies at the versions the tests ran with (constraints.txt, made by
# deploy/lock); torch is left as installed above.
WORKDIR /src
COPY constraints.txt ./
COPY pyproject.toml README.md ./
COPY gradstore ./gradstore
COPY db ./db
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ${WHEELS_URL:+--find-links "$WHEELS_URL"} --constraint constraints.txt \
        ".[${GRADSTORE_EXTRAS}]" \
    && cd / && rm -rf /src \
    && python -c "import torch, faiss, gradstore.service.app, gradstore.worker.runner" \
    && gradstore --help >/dev/null

RUN useradd --create-home --uid 10001 --user-group gradstore \
    && mkdir -p /data /models \
    && chown gradstore:gradstore /data
USER gradstore
WORKDIR /home/gradstore

# /data: the shared artifact root (a named volume in Compose); /models: local model
# directories, mounted read-only.
EXPOSE 8000

# No HEALTHCHECK here: the worker role has no port. The Compose api service checks /healthz
# with the Python standard library (no curl in the image).
ENTRYPOINT ["gradstore"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
