# Two entry points (README): `make demo` runs the main job end to end, `make test` runs the tests.
# Each creates its own virtual environment in .venv from pyproject.toml + constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,openvino,plot,train,export,ray,dev
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

# The main job: a synthetic ENVI cube -> unmix-train (tiny) -> unmix-export (ONNX) -> unmix-run on
# ONNX Runtime CPU -> unmix-eval against the truth, beside the baselines.
demo: venv
	$(BIN)/python examples/demo.py scene --out $(DEMO)
	$(BIN)/unmix-train $(DEMO)/scene.hdr --endmembers 4 --preset tiny --out $(DEMO)/checkpoint
	$(BIN)/unmix-export $(DEMO)/checkpoint --out $(DEMO)/model
	$(BIN)/unmix-run $(DEMO)/scene.hdr --model $(DEMO)/model --out $(DEMO)/result --backend onnxruntime --quiet
	$(BIN)/python examples/demo.py baselines --out $(DEMO)
	@echo "unmix (HybridSTU + diffusion, ONNX Runtime CPU):"
	$(BIN)/unmix-eval $(DEMO)/result/scene --truth $(DEMO)/truth.npz --cube $(DEMO)/scene.hdr

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out runs .pytest_cache
