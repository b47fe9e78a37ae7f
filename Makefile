# effilab — instructor's edition.
#   make lab    set up .venv on first use and open the course in JupyterLab
#   make test   set up .venv on first use and run the test suite (CPU is enough)
# TORCH picks the torch build: the default lets pip choose (CUDA where you have it);
# CI pins the CPU wheel with TORCH=torch==2.13.0 so installs stay fast.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=
# JupyterLab refuses to start as root (Docker, many cloud VMs) unless told: say it for root only
USER_ID ?= $(shell id -u)
LAB_ARGS ?= $(if $(filter 0,$(USER_ID)),--allow-root,)

.PHONY: lab grader test test-fast release publish clean

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

# Instructor commands in the course's venv: make grader ARGS="autograde -a 01_float_formats"
grader: $(VENV)/.installed
	$(PY) -m grader $(ARGS)

test: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MPLBACKEND=Agg $(PY) -m pytest $(PYTEST_ARGS)

# Skip the tests that execute whole notebooks and run nbgrader end to end.
test-fast: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MPLBACKEND=Agg $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

release: $(VENV)/.installed
	$(PY) -m grader release

publish: $(VENV)/.installed
	$(PY) -m grader publish dist/student-edition --force

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,lab]"
	touch $@

clean:
	rm -rf $(VENV) grader/course dist
