# Development tasks. Run `make setup` once, then `make test`.
# The Kafka targets pass KAFKA_PORT, KAFKA_DATA_DIR and the other settings
# that scripts/kafka.sh lists on to it, for example `make kafka-up KAFKA_PORT=29092`.

PYTHON ?= python3.11
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Touched after a successful install, so `make setup` does nothing until
# pyproject.toml changes or .venv is removed.
SETUP_STAMP := $(VENV)/.kdiag-setup-done

.PHONY: setup kafka-up kafka-down test run bench clean

setup: $(SETUP_STAMP)
	@:

$(SETUP_STAMP): pyproject.toml
	@test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	@$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $@

kafka-up:
	@scripts/kafka.sh up

kafka-down:
	@scripts/kafka.sh down

# The tests start and stop their own broker on free ports.
test: setup
	@$(VENV_PYTHON) -m pytest -q

run: setup
	@test -f scripts/run_demo.sh || { echo "make: scripts/run_demo.sh is missing, so there is no demo to run" >&2; exit 1; }
	@scripts/run_demo.sh

bench: setup
	@test -f bench/__main__.py || { echo "make: bench/__main__.py is missing, so there is no benchmark to run" >&2; exit 1; }
	@$(VENV_PYTHON) -m bench

# Removes brokers' data and worker state in var/, but keeps the jar cache in
# .cache/. Stop brokers first: deleting the data of a running broker breaks it.
clean:
	@for pid_file in var/kafka-*/broker.pid; do \
		test -f "$$pid_file" || continue; \
		pid=$$(cat "$$pid_file"); \
		if kill -0 "$$pid" 2>/dev/null; then \
			echo "make: not removing var/ because the broker from $${pid_file%/broker.pid} is still running (PID $$pid); stop it with make kafka-down and the same KAFKA_PORT" >&2; \
			exit 1; \
		fi; \
	done
	@rm -rf var/
