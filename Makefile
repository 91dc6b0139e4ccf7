# The two commands that set up a fresh machine (README): `make demo` and `make test`.
# torch: reused where the system Python has one (GPU machines); otherwise the
# pinned CPU wheel torch==2.13.0 (any other spec downloads GBs of CUDA packages).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test bench wheel info clean

$(VENV)/.torch:
	@if python3 -c "import torch" 2>/dev/null; then \
		echo "reusing the system torch"; python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV) && $(PIP) install -q torch==2.13.0; \
	fi
	@touch $@

$(VENV)/.deps: $(VENV)/.torch pyproject.toml
	$(PIP) install -q setuptools wheel pybind11 numpy triton pytest pytest-benchmark scipy tqdm transformers matplotlib
	@touch $@

$(VENV)/.built: $(VENV)/.deps setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/include/mdsample/*.h)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

demo: $(VENV)/.built
	$(PY) benchmarks/demo.py

test: $(VENV)/.built
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: $(VENV)/.built
	$(PY) benchmarks/bench_sampling.py

info: $(VENV)/.built
	$(PY) -m mdsample info

wheel: $(VENV)/.deps
	$(PIP) wheel --no-build-isolation --no-deps -w wheelhouse .

clean:
	rm -rf build wheelhouse *.egg-info mdsample/_C*.so
