# One entry point for a newcomer, CI and the tests. Every target is idempotent.
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
ENV := source $(ROOT)/scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: setup tools venv lab-deps lab-up lab-down test unit lint lock

## setup: toolchain, virtualenv, lab prerequisites, local backend and passphrase
setup: tools venv lab-deps
	@$(ENV) scripts/setup-backend

tools:
	@scripts/install-pulumi

venv:
	@scripts/setup-venv

## policy-venv: the policy pack's own virtualenv (policy/.venv; pulumi-policy pins another protobuf)
.PHONY: policy-venv
policy-venv:
	@scripts/setup-policy-venv

lab-deps:
	@scripts/lab-deps

## lab-up: boot the lab hosts and `pulumi up` the lab stack
lab-up: setup
	@$(ENV) .venv/bin/python scripts/lab_stack.py up

lab-down:
	@$(ENV) .venv/bin/python scripts/lab_stack.py down

## test: everything, on real lab hosts (needs root)
test: setup
	@$(ENV) scripts/run-tests $(PYTEST_ARGS)

## unit: the pure tests only (no lab, no root)
unit: venv
	@$(ENV) .venv/bin/python -m pytest -m "not lab and not cluster and not engine and not local" tests $(PYTEST_ARGS)

lint: venv
	@$(ENV) ruff check .

## review: the pull-request comment CI posts for one stack (make review STACK=staging -> out/review-staging.md)
.PHONY: review
review: tools venv policy-venv
	@$(ENV) scripts/review-stack "$(STACK)"

## lock: regenerate requirements.txt from requirements.in
lock:
	@scripts/setup-venv --lock
