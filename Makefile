# Every target builds what it needs: `make test` on a fresh machine creates .venv itself.
PYTHON ?= python3
# `make serve PORT=8001 HOST=0.0.0.0`: where the API listens.
HOST ?= 127.0.0.1
PORT ?= 8000
# `make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu`: torch from that index first (the
# CPU build); unset, pip takes torch from PyPI, whose Linux wheel is a CUDA build of several GB.
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export OMP_NUM_THREADS := 1

.PHONY: venv run serve test bench bench-sbi compose-test clean

venv: $(STAMP)

# examples/problems: the example problem plugins (two_moons, slcp, ...), which the tests and
# `make serve` use.
$(STAMP): pyproject.toml constraints.txt examples/problems/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PIP) install -q -c constraints.txt --index-url $(TORCH_INDEX) torch)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q -c constraints.txt -e examples/problems
	touch $(STAMP)

# The main job on the embedded default (SQLite file + local Ray): the service and its dashboard.
run: serve
serve: venv
	$(VENV)/bin/falcon-lite migrate
	$(VENV)/bin/falcon-lite serve --host $(HOST) --port $(PORT)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) bench/buffer.py
	$(PY) bench/loop.py
	$(PY) bench/ray_loop.py
	$(PY) bench/startup.py
	$(PY) bench/api.py

# falcon-lite against sbi's sequential NPE on sbibm's reference posteriors (docs/flows.md).
# Installs the `bench` extra (sbi, pinned in constraints.txt; torch stays as it is) first.
# `make bench-sbi SBIBM_ARGS=--quick`: one task, observation, budget and seed.
SBIBM_ARGS ?=
bench-sbi: venv
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(PY) bench/sbibm.py $(SBIBM_ARGS)

# The docker compose deployment for real (tests/test_compose_e2e.py): builds the images, runs the
# stack and exercises it. Uses the caller's Docker engine, or sets one up with
# ../shared/tools/container-env.sh (needs root) when none answers.
compose-test: venv
	FALCON_LITE_REQUIRE_COMPOSE=1 $(PY) -m pytest tests/test_compose_config.py tests/test_compose_e2e.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .falcon-lite .pytest_cache .hypothesis
