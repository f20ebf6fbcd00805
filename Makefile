# riskstream: `make demo` and `make test` are all a new checkout needs (Python 3.11+, Java 17+,
# Maven, make; kcat comes from apt). `make setup` is idempotent and takes a second when done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-installs whenever pyproject.toml is newer than this stamp.
STAMP := $(VENV)/.riskstream-setup

.PHONY: help setup native apt-tools kerberos kafka-jars test lint demo clean

help:
	@echo "make setup   virtualenv in $(VENV) (pip, PyPI only), kcat, prometheus and MIT Kerberos (apt), the kerberos extra (gssapi), the Kafka broker's jars (Maven), the hot-path modules compiled (mypyc)"
	@echo "make test    ruff, mypy, then pytest -W error (starts and stops its own broker on 19092/19093)"
	@echo "make demo    riskstream demo"
	@echo "make lint    ruff and mypy only"

setup: $(STAMP) native apt-tools kerberos kafka-jars

# The hot-path modules compiled by mypyc (modeling/native.py); rebuilt only when their sources
# changed. Without a C compiler the sources run as they are (about a fifth slower per message).
native: $(STAMP)
	@$(BIN)/python -m modeling.native_build build --if-stale \
		|| echo "warning: mypyc could not compile the hot-path modules; running them as Python" >&2

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "riskstream needs Python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	@if [ ! -x $(BIN)/python ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Debian packages the tests use: kcat (librdkafka's CLI, interop tests), prometheus (a real
# Prometheus server scraping a worker, and promtool for the deployment checks), and MIT Kerberos:
# a KDC and its admin tool for the GSSAPI test broker, the library the gssapi package builds on.
APT_TOOLS := kcat:kcat promtool:prometheus krb5kdc:krb5-kdc kadmin.local:krb5-admin-server \
	krb5-config:libkrb5-dev

apt-tools:
	@export PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for pair in $(APT_TOOLS); do \
		tool=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$tool >/dev/null || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "warning: missing Debian packages:$$missing (needs root and apt-get to install);" \
		     "install them yourself; the tests that use them fail without them" >&2; \
		exit 0; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	for pkg in $$missing; do apt-cache show $$pkg >/dev/null 2>&1 || { apt-get update -qq; break; }; done; \
	apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	echo "installed:$$missing"

# The `kerberos` extra (gssapi), built against libkrb5-dev from apt-tools.
kerberos: $(STAMP) apt-tools
	@$(BIN)/python -c 'import gssapi' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dev,kerberos]' \
		|| echo "warning: gssapi did not install (it needs libkrb5-dev and a C compiler); Kafka's GSSAPI and its tests need it" >&2

kafka-jars: $(STAMP)
	@$(BIN)/riskstream kafka fetch

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy modeling streams training benchmarks

test: setup lint
	@# exit code 5 = no tests collected: not a failure for this target
	$(BIN)/pytest -W error --durations=25 || { rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; else exit $$rc; fi; }

demo: setup
	$(BIN)/riskstream demo

clean:
	-$(BIN)/python -m modeling.native_build clean
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
