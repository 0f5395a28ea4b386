# Two entry points (README): `make demo` runs the main job end to end, `make test` runs the tests.
# Each creates its own virtual environment in .venv from pyproject.toml + constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,openvino,plot,train,export,dev
DEMO   ?= out/demo

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "unmix needs Python >= 3.11"'
	@$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian run 'apt-get install python3-venv'" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

demo: venv
	$(BIN)/python examples/demo.py --out $(DEMO)

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out runs .pytest_cache
