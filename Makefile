# SafeGate developer entry points. A newcomer on a fresh Debian needs only `make run`;
# CI runs `make test` (via .ci/run) in a fresh clone.

SHELL := /bin/bash

# First python3 that is >= 3.11 (override with `make PYTHON=/path/to/python3.12 ...`).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && \
	{ command -v $$p; break; }; done)

VENV  := .venv
VBIN  := $(VENV)/bin
# Re-install only when pyproject.toml changes (or the venv is new). `make run` installs what
# the gateway needs and nothing more (no compiler needed on a fresh Pi); the tests, linters
# and benchmarks install the dev extra on top (mitmproxy, pdqhash, playwright, ...).
RUN_STAMP := $(VENV)/.installed-run-stamp
STAMP     := $(VENV)/.installed-stamp

# Debian packages the integration tests and the benchmark run; COMMANDS lists what each
# provides (same order) so we can skip apt when everything is there.
APT_PKGS     := g++ python3-dev unbound knot-dnsutils dnsutils prometheus dnsperf dnsmasq-base dnsdist chromium curl nginx-light systemd postgresql bind9 pdns-recursor
APT_COMMANDS := g++ python3-config unbound kdig dig promtool dnsperf dnsmasq dnsdist chromium curl nginx systemd-analyze pg_ctlcluster named pdns_recursor
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

CONFIG ?= deploy/example/gateway.yaml

.PHONY: help run venv test lint typecheck unit bench bench-feeds bench-fleet deps-apt clean schema

help:
	@echo "make run       create .venv, install SafeGate, run it with $(CONFIG)"
	@echo "make test      ruff + mypy + pytest, pure Python then C accelerators (needs: make deps-apt)"
	@echo "make bench     DNS benchmark: SafeGate vs unbound vs dnsmasq, workloads a-f (bench/dns_compare.py;"
	@echo "              BENCH_ARGS=\"--only safegate,unbound --workloads a,c --names 50000 --duration 2\")"
	@echo "make bench-feeds  central feed latency and 100k-entry apply (bench/feed_latency.py)"
	@echo "make bench-fleet  10,000 simulated gateways behind a caching nginx (bench/fleet.py;"
	@echo "              FLEET_ARGS=\"--gateways 1000 --join 200\")"
	@echo "make compile   build the optional C list lookup and question parse in place (needs a C compiler)"
	@echo "make deps-apt  install the Debian packages the tests use"
	@echo "make schema    regenerate docs/schema/*.json and docs/configuration.md's key tables"

$(VBIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "SafeGate needs Python >= 3.11 (Debian 12: apt-get install python3 python3-venv)"; \
		exit 1; fi
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "$(PYTHON) has no venv/ensurepip; installing python3-venv"; \
		$(SUDO) apt-get install -y python3-venv || { \
			$(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }; \
	fi
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(VBIN)/python
	$(VBIN)/python -m pip install --quiet --upgrade pip
	$(VBIN)/python -m pip install --quiet -e .
	@touch $@

$(STAMP): pyproject.toml | $(VBIN)/python
	$(VBIN)/python -m pip install --quiet --upgrade pip
	$(VBIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(RUN_STAMP)

venv: $(STAMP)

run: $(RUN_STAMP)
	exec $(VBIN)/safegate run -c $(CONFIG)

lint: venv
	$(VBIN)/ruff check gateway tests bench

typecheck: venv
	$(VBIN)/mypy

unit: venv
	$(VBIN)/pytest -q

# The whole suite twice: on the pure-Python paths (what a Pi without a compiler runs), then
# with the C accelerators built (`compile`), which must then all be there.
test: venv compile
	$(VBIN)/ruff check gateway tests bench
	$(VBIN)/mypy
	@echo "== pytest, pure Python (SAFEGATE_PURE=1)"
	SAFEGATE_PURE=1 $(VBIN)/pytest -q
	@echo "== pytest, C accelerators (SAFEGATE_EXPECT_COMPILED=1)"
	SAFEGATE_EXPECT_COMPILED=1 $(VBIN)/pytest -q

bench: venv deps-apt
	$(VBIN)/python bench/dns_compare.py $(BENCH_ARGS)

bench-feeds: venv deps-apt
	$(VBIN)/python bench/feed_latency.py $(BENCH_ARGS)

FLEET_ARGS ?= --gateways 10000 --per-process 1250
bench-fleet: venv deps-apt
	$(VBIN)/python bench/fleet.py $(FLEET_ARGS)

# The optional C accelerators: list lookup (gateway/lists/_lookup.c), question parse and blocked
# reply (gateway/dns/_fastparse.c), batched UDP I/O (gateway/dns/_udpio.c, Linux only), built
# next to their sources so a source checkout uses them; without them the pure-Python versions
# run (SAFEGATE_PURE=1 forces those).
.PHONY: compile
schema: $(RUN_STAMP)
	$(VBIN)/python -m gateway schema --write

compile: venv
	$(VBIN)/python setup.py build_ext --inplace

# Soak (issue #10): 30 minutes at 70% of peak, a policy reload and a feed update each minute;
# per-minute RSS, descriptors, lost queries and p99 (bench/soak.py; SOAK_ARGS="--minutes 3").
.PHONY: soak
soak: venv deps-apt
	$(VBIN)/python bench/soak.py $(SOAK_ARGS)

# Daemons in these packages (unbound, prometheus) are kept from auto-starting while apt runs
# (policy-rc.d 101): tests start their own on loopback, and Debian's unbound would otherwise
# try to fetch the root trust anchor from the internet.
deps-apt:
	@missing=0; for c in $(APT_COMMANDS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 0 ]; then echo "deps-apt: all present"; exit 0; fi; \
	set -e; rc=""; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
		$(SUDO) chmod 755 /usr/sbin/policy-rc.d; rc=1; fi; \
	trap '[ -z "$$rc" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
	$(SUDO) apt-get update; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		$(APT_PKGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/out build
	rm -f gateway/lists/_lookup.*.so gateway/dns/_fastparse.*.so gateway/dns/_udpio.*.so
