# One entry point for people and CI. `make test` is the command CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY := .venv/bin/python
NODES ?= 4
GPUS ?= 8
DOMAINS ?= 2

.PHONY: help venv lint typecheck imports test test-fast binaries cluster-up cluster-down cluster-status fail-node demo run-pods bench-attention gpu-check

help:
	@echo "make demo          kubectl apply a LongVILAJob on a local cluster and train it (tiny model, CPU)"
	@echo "make test          lint, type check and the full test suite (what CI runs)"
	@echo "make cluster-up    start the local cluster (NODES=$(NODES) GPUS=$(GPUS) DOMAINS=$(DOMAINS); KUEUE=1 adds Kueue)"
	@echo "make cluster-down  stop every process the local cluster started"
	@echo "make fail-node NODE=name   make a fake node NotReady (its heartbeats stop)"
	@echo "make gpu-check     on one H100/H200: kernels, 7B training steps, ring-step TFLOP/s -> gpu-check.json"

venv:
	@scripts/bootstrap

lint: venv
	.venv/bin/ruff check contract operator trainer localcluster tests
	.venv/bin/ruff format --check contract operator trainer localcluster tests

typecheck: venv
	$(PY) -m mypy contract/longvila_contract operator/longvila_operator trainer/longvila_trainer \
	  localcluster/longvila_localcluster

# Who may import whom (pyproject.toml [tool.importlinter]): operator → contract, trainer → contract,
# localcluster → anything; the contract imports none of them, nor torch or the Kubernetes client.
imports: venv
	.venv/bin/lint-imports

test: lint typecheck imports binaries
	$(PY) -m pytest -p no:cacheprovider

test-fast: venv
	$(PY) -m pytest -p no:cacheprovider -m "not cluster and not slow"

# Built (or found cached) before pytest, so a cold build (minutes) is not under the tests' timeout.
binaries: venv
	$(PY) -m longvila_localcluster.cli build

cluster-up: venv
	$(PY) -m longvila_localcluster.cli up --nodes $(NODES) --gpus-per-node $(GPUS) --domains $(DOMAINS) \
	  $(if $(filter 1 yes true,$(KUEUE)),--kueue)

cluster-down: venv
	$(PY) -m longvila_localcluster.cli down

cluster-status: venv
	$(PY) -m longvila_localcluster.cli status

fail-node: venv
	@test -n "$(NODE)" || { echo "usage: make fail-node NODE=<node name>"; exit 2; }
	$(PY) -m longvila_localcluster.cli fail-node $(NODE)

# kubectl apply a LongVILAJob on a fresh local cluster and train it for real (tiny model, CPU).
demo: venv binaries
	$(PY) -m longvila_localcluster.cli demo

# Run the operator's pods on fake nodes of a running `make cluster-up` cluster as local processes.
run-pods: venv
	$(PY) -m longvila_localcluster.cli run-pods

bench-attention: venv
	$(PY) -m longvila_trainer.bench.attention

# On a GPU machine only (never in CI): kernels against exact attention, world-1 steps of the real
# 7B architecture, ring-step TFLOP/s; < 8 min on one H100/H200; JSON report in gpu-check.json.
# `$(PY) -m longvila_trainer.bench.gpu_check --help` says what it measures; --dry-run checks it on a CPU.
gpu-check: venv
	$(PY) -m longvila_trainer.bench.gpu_check --out gpu-check.json
