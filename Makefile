# Two set-up commands: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev
STAMP_RUN := $(VENV)/.installed-run

.PHONY: demo test bench fuzz lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is installed first, pinned, so that no resolver ever picks a CUDA build here.
$(STAMP_RUN): pyproject.toml constraints-dev.txt | $(PY)
	$(PIP) install --quiet -c constraints-dev.txt torch==2.13.0
	$(PIP) install --quiet -c constraints-dev.txt -e '.[demo]'
	touch $@

$(STAMP): pyproject.toml constraints-dev.txt | $(PY)
	$(PIP) install --quiet -c constraints-dev.txt torch==2.13.0
	$(PIP) install --quiet -c constraints-dev.txt -e '.[dev]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/torchkeep demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) -m benchmarks

# the long fuzz (5000 inputs per reader), 25 kill trials per tk.save format, 30 Checkpointer
# kill trials per mode, every fault site; counts go to tests/fuzz/reliability.json (RELIABILITY.md)
RELIABILITY_TESTS := tests/fuzz tests/formats/test_pickle_hostile.py tests/formats/test_json_sites.py \
	tests/formats/test_save_faults.py tests/manager/test_faults.py tests/manager/test_hostile_fs.py tests/manager/test_kill.py
fuzz: $(STAMP)
	TORCHKEEP_KILL_TRIALS=30 $(PY) -m pytest -q -n 2 $(RELIABILITY_TESTS) --fuzz-long \
		--reliability-report tests/fuzz/reliability.json
	$(PY) tests/_reliability.py tests/fuzz/reliability.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache torchkeep-demo
