# premium-operator: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test unit crds crds-check fmt lint tools cluster-up cluster-down demo demo-down clean

all: build

build:
	$(CARGO) build

## test: fmt check, clippy -D warnings, every unit and integration test on the local control plane, CRD sync.
test:
	bash hack/test.sh

## bench: convergence, API cost, steady state and memory at 100 and 1,000 features against a
## hand-written baseline (release build, local control plane); BENCH_ARGS=--large adds 10,000.
.PHONY: bench
bench:
	bash hack/bench.sh $(BENCH_ARGS)

## reliability: faults (operator SIGKILLs, leader kill, apiserver restart/freeze, etcd restart,
## expired watch), the bad-input corpus and the security/isolation cases at full size, with a
## results table; fault clusters of its own under target/cluster-<name>.
.PHONY: reliability
reliability:
	bash hack/reliability.sh

## unit: the tests that need no cluster.
unit:
	$(CARGO) test --lib --bins

## crds: regenerate crds/ (and the chart's copy, which templates/crds.yaml renders) from the Rust types.
crds:
	$(CARGO) run --quiet -- crd > crds/premium.dev_crds.yaml
	cp crds/premium.dev_crds.yaml charts/premium-operator/files/premium.dev_crds.yaml

## chart: lint the Helm chart (--strict) and package it into target/chart/premium-operator-<version>.tgz.
.PHONY: chart
chart:
	bash hack/build-tools.sh
	source hack/lib.sh && HELM=$$(tool_path helm) && \
	  $$HELM lint --strict charts/premium-operator && \
	  $$HELM package charts/premium-operator --destination target/chart

## promtool: install Prometheus and promtool (Debian's prometheus package) for the alert tests.
.PHONY: promtool
promtool:
	bash hack/install-promtool.sh

## api-docs: regenerate docs/api.md from the CRD schema.
api-docs:
	$(CARGO) run --quiet -- api-docs > docs/api.md

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## tools: build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and helm into the cache.
tools:
	bash hack/build-tools.sh

cluster-up:
	bash hack/cluster-up.sh

cluster-down:
	bash hack/cluster-down.sh

## demo: the whole job end to end on the local control plane (leaves it running).
demo:
	bash hack/demo.sh

demo-down:
	bash hack/demo-down.sh
