# syntax=docker/dockerfile:1
# riskstream CPU image: the scorer worker (default), and every other `riskstream` subcommand
# (topics, replay, train on CPU, models). Build from the repository root:
#
#   docker build -f docker/cpu.Dockerfile -t riskstream:cpu .
#
# It installs riskstream exactly the way `make setup` and CI do, `pip install` of the repo's
# pyproject.toml (there is no second dependency list), with the kerberos extra (Kafka's SASL
# GSSAPI); only the dev extras are left out. Like `make setup`, it compiles the hot-path modules
# with mypyc (modeling/native.py) in a stage of its own and keeps only the compiled modules.

# The kerberos extra, gssapi, has no Linux wheels on PyPI: this stage builds its wheel against
# MIT Kerberos, so that the image gets the library it links to without a compiler.
FROM python:3.11.13-slim-bookworm AS kerberos-wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml ./
COPY docker/pyproject_deps.py ./docker/
RUN python docker/pyproject_deps.py --extra kerberos > kerberos.txt \
    && python -m pip wheel --no-cache-dir --no-deps -r kerberos.txt -w /wheels

FROM python:3.11.13-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RISKSTREAM_HOME=/var/lib/riskstream \
    RISKSTREAM_REGISTRY_DIR=/var/lib/riskstream/registry \
    RISKSTREAM_METRICS_PORT=9464

# libgomp1: Paddle's CPU kernels link against the system OpenMP runtime (slim lacks it).
# libgssapi-krb5-2: MIT Kerberos's GSSAPI library, which the gssapi wheel links to.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libgssapi-krb5-2 \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, the same in the GPU image, so that both can write the shared registry volume.
# The registry directory exists in the image (owned by that user) so that a fresh named volume
# mounted there inherits the ownership.
RUN groupadd --system --gid 10001 riskstream \
    && useradd --system --uid 10001 --gid riskstream --home-dir /var/lib/riskstream \
       --shell /usr/sbin/nologin riskstream \
    && mkdir -p /var/lib/riskstream/registry \
    && chown -R riskstream:riskstream /var/lib/riskstream

WORKDIR /tmp/riskstream-src
COPY pyproject.toml README.md ./
COPY modeling ./modeling
COPY streams ./streams
COPY training ./training
COPY --from=kerberos-wheel /wheels /tmp/wheels
# DL3013 takes '.[kerberos]' for an unpinned PyPI package; it is this project with its extra,
# pinned by pyproject.toml like the rest.
# hadolint ignore=DL3013
RUN python -m pip install --only-binary=gssapi --find-links=/tmp/wheels '.[kerberos]' \
    && rm -rf /tmp/riskstream-src /tmp/wheels

# The hot-path modules compiled by mypyc from the very sources installed above, as `make setup`
# compiles them: mypy (pyproject.toml's dev extra) and a C compiler stay in this stage. The
# compiled set records a digest of its sources; the image uses it only if they match.
FROM runtime AS compiled
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml README.md ./
COPY modeling ./modeling
COPY streams ./streams
COPY training ./training
COPY docker/pyproject_deps.py ./docker/
RUN python docker/pyproject_deps.py --extra dev --only mypy > mypy.txt \
    && python -m pip install -r mypy.txt \
    && python -m modeling.native_build build \
    && mkdir /compiled \
    && find modeling streams training -name '*.so' -exec cp --parents {} /compiled/ \; \
    && cp --parents modeling/_compiled.json /compiled/

FROM runtime
COPY --from=compiled /compiled /tmp/compiled
# Into the installed packages, beside the same sources; the build fails unless they are used.
RUN cp -r /tmp/compiled/. "$(python -c 'import modeling, pathlib; print(pathlib.Path(modeling.__file__).parent.parent)')" \
    && rm -rf /tmp/compiled \
    && python -c "from modeling import native; import streams.pipeline; s = native.status(); assert s['compiled'] and s['loaded']['streams.pipeline'] == 'compiled', s"

WORKDIR /var/lib/riskstream
USER 10001:10001

EXPOSE 9464

# Healthy while the worker serves its Prometheus endpoint. One-shot commands (topics, replay,
# train) serve none: compose turns the check off for them.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('RISKSTREAM_METRICS_PORT', '9464'), timeout=4).read()"]

ENTRYPOINT ["riskstream"]
CMD ["worker"]
