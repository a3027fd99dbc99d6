PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: test demo venv clean

venv: $(STAMP)

# Reinstall only when the dependency list changes; torch/torchvision are pinned as a matching
# pair through constraints.txt so nnunetv2 cannot swap torch for another build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30

demo: $(STAMP)
	$(VENV)/bin/vadice demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
