# syntax=docker/dockerfile:1
# riskstream GPU image: the trainer (`riskstream train`) and GPU scorer workers. Build from the
# repository root:
#
#   docker build -f docker/gpu.Dockerfile -t riskstream:gpu .
#
# Base: Paddle's official release image for Paddle 3.3.0 on CUDA 12.6 / cuDNN 9.5 (Ubuntu 22.04).
# Paddle's CUDA 12 builds carry sm_90 (Hopper: H100/H200) kernels, which the newest
# paddlepaddle-gpu on PyPI (2.6.2, CUDA 11.8) lacks. Tag from Paddle's install docs and Docker Hub
# (paddlepaddle/paddle); the registry mirror ccr-2vdh3abv-pub.cnc.bj.baidubce.com/paddlepaddle/paddle
# serves the same tags.
FROM paddlepaddle/paddle:3.3.0-gpu-cuda12.6-cudnn9.5

# Why not simply `pip install .` into the image's Python: that interpreter is Python 3.10 (with a
# cp310 paddlepaddle-gpu), and riskstream requires Python 3.11. So this image keeps the base for
# what it is needed for (driver-compatible CUDA 12.6, cuDNN 9.5 and NCCL libraries on
# LD_LIBRARY_PATH) and installs into a Python 3.11 virtualenv:
#   1. paddlepaddle-gpu of the same version as the base image, from Paddle's CUDA 12.6 package
#      index: the command README.md gives for GPU installs;
#   2. every other dependency, read from pyproject.toml by docker/pyproject_deps.py, which leaves
#      out `paddlepaddle` (the CPU build: installing it would overwrite the `paddle` package of
#      paddlepaddle-gpu, as both ship the same modules);
#   3. the `kerberos` extra, read the same way (`--extra kerberos`);
#   4. riskstream itself with `pip install --no-deps .`.
# pyproject.toml remains the only dependency list. uv is used only to fetch a pinned standalone
# CPython 3.11 build, instead of adding a third-party PPA to the base image's apt sources.
COPY --from=ghcr.io/astral-sh/uv:0.9.26 /uv /usr/local/bin/uv

ARG PADDLE_VERSION=3.3.0
ARG PADDLE_INDEX=https://www.paddlepaddle.org.cn/packages/stable/cu126/

# PIP_INDEX_URL: PyPI, as for `make setup`, whatever pip mirror the base image configures.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=https://pypi.org/simple \
    UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    VIRTUAL_ENV=/opt/riskstream \
    PATH=/opt/riskstream/bin:$PATH \
    RISKSTREAM_HOME=/var/lib/riskstream \
    RISKSTREAM_REGISTRY_DIR=/var/lib/riskstream/registry \
    RISKSTREAM_METRICS_PORT=9464

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The same uid/gid as the CPU image: both write the shared registry volume.
RUN groupadd --system --gid 10001 riskstream \
    && useradd --system --uid 10001 --gid riskstream --home-dir /var/lib/riskstream \
       --shell /usr/sbin/nologin riskstream \
    && mkdir -p /var/lib/riskstream/registry \
    && chown -R riskstream:riskstream /var/lib/riskstream

# The kerberos extra (Kafka's SASL GSSAPI), as in the CPU image: gssapi has no Linux wheels on
# PyPI, so pip builds it against MIT Kerberos (libkrb5-dev, which brings libgssapi-krb5-2).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
    && rm -rf /var/lib/apt/lists/*

RUN uv venv --seed --python 3.11 /opt/riskstream \
    && python -m pip install "paddlepaddle-gpu==${PADDLE_VERSION}" -i "${PADDLE_INDEX}"

WORKDIR /tmp/riskstream-src
COPY pyproject.toml README.md ./
COPY docker/pyproject_deps.py ./docker/
COPY modeling ./modeling
COPY streams ./streams
COPY training ./training
RUN python docker/pyproject_deps.py --exclude paddlepaddle > deps-from-pyproject.txt \
    && python docker/pyproject_deps.py --extra kerberos >> deps-from-pyproject.txt \
    && python -m pip install -r deps-from-pyproject.txt \
    && python -m pip install --no-deps . \
    && python -m pip show paddlepaddle-gpu > /dev/null \
    && if python -m pip show paddlepaddle > /dev/null 2>&1; then \
         echo "the CPU build paddlepaddle got installed beside paddlepaddle-gpu" >&2; exit 1; \
       fi \
    && rm -rf /tmp/riskstream-src

WORKDIR /var/lib/riskstream
USER 10001:10001

EXPOSE 9464

# Healthy while a worker serves its Prometheus endpoint; the trainer serves none, and compose
# turns the check off for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/riskstream/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('RISKSTREAM_METRICS_PORT', '9464'), timeout=4).read()"]

ENTRYPOINT ["riskstream"]
CMD ["worker"]
