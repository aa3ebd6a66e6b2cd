# Every target installs what it needs first (Debian packages, then a virtual environment
# outside the clone keyed by a hash of setup.py), so a fresh machine needs only `make`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
SETUP_HASH := $(shell sha256sum setup.py | cut -c1-16)
VENV ?= $(HOME)/.cache/cmt/venv-$(SETUP_HASH)
PY := $(VENV)/bin/python
# chromium + chromium-driver: the web demo's browser test (tests/examples/test_app.py).
APT_PACKAGES := ffmpeg espeak-ng chromium chromium-driver
PYTEST_ARGS ?=
# OpenMP threads sleep while they wait instead of spinning, so that a second CPU-bound process (another job, a test
# run) does not slow every step down many times over (README, "Threads"). Set OMP_WAIT_POLICY=ACTIVE to override.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help system-deps venv test lint quickstart demo study

help:
	@echo "make demo   - run the main job on the embedded data (installs what it needs)"
	@echo "make study  - the full evidence study on the embedded data: 5 folds x 2 seeds, figures (about 50 minutes)"
	@echo "make quickstart - one-minute end-to-end check of the model package"
	@echo "make app    - the web demo on http://127.0.0.1:7860 (after make demo)"
	@echo "make test   - run the test suite (installs what it needs)"
	@echo "make lint   - ruff"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.ready:
	@echo "creating $(VENV) (once per version of setup.py)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

# The environment is shared between clones, so point the editable install at this one.
venv: system-deps $(VENV)/.ready
	@$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The main job: the paper end to end on the embedded synthetic corpus (~10 min on 2 cores; cached steps are reused,
# DEMO_ARGS=--fresh redoes them).
DEMO_ARGS ?=
demo: venv
	$(PY) examples/demo.py --output_dir demo_output $(DEMO_ARGS)

# The demo's protocol at full size with the paper's figures and the sentiment config (about 50 minutes on 2 cores,
# two runs at a time; every run is cached, so a killed study continues where it stopped; STUDY_ARGS=--fresh redoes all).
STUDY_ARGS ?=
study: venv
	$(PY) examples/study.py --output_dir study_output $(STUDY_ARGS)

# A one-minute check of the model package alone: build, save in Hub layout, reload with remote code, classify.
quickstart: venv
	$(PY) examples/quickstart.py --output_dir demo_output/quickstart

# The web demo (examples/app.py) on http://127.0.0.1:7860 with demo_output/best_model (after `make demo`);
# APP_ARGS="--model path/or/hub-id --asr_model openai/whisper-small" for another checkpoint.
.PHONY: app
APP_ARGS ?=
app: venv
	$(PY) examples/app.py $(APP_ARGS)

# Benchmarks (benchmarks/README.md): `bench` writes benchmarks/results/, `bench-smoke` runs them all tiny in seconds.
.PHONY: bench bench-smoke
bench: venv
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-smoke: venv
	$(PY) -m benchmarks --smoke $(BENCH_ARGS)
