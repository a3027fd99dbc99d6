PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: test test-recipes demo venv clean

venv: $(STAMP)

# Reinstall only when the dependency list changes; torch/torchvision are pinned as a matching
# pair through constraints.txt so nnunetv2 cannot swap torch for another build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# The study recipes' tiny end-to-end runs (marker "recipe": ~40 min on 2 cores, each trains a dozen nnU-Net
# units) run in CI after `make test`, and before a study is tagged; `make test` is the everyday suite.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30 -m "not recipe"

test-recipes: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10 -m recipe

demo: $(STAMP)
	$(VENV)/bin/vadice demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
