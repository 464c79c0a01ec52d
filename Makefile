# Two entry points for a fresh machine (offline, CPU): `make demo` and `make test`.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
DETECTOR := .cache/detector/detector.pt
# The demo's v2: the same recipe with another seed (a second, different detector).
DETECTOR_V2 := .cache/detector-seed1/detector.pt
# Detectors of other generations and class sets, trained on the same shapes (the canary
# tests across generations: export/tiny_detector.py RECIPES). `make test` needs the two
# fine-tuned from $(DETECTOR) (seconds); `make test-generations` the YOLO26n too (minutes).
CANARIES := yolov10n yolov8n-3class
CANARY_DETECTORS := $(foreach recipe,$(CANARIES),.cache/detector-$(recipe)/detector.pt)
GENERATION_DETECTORS := $(CANARY_DETECTORS) .cache/detector-yolo26n/detector.pt
export YOLO_OFFLINE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup detector detectors demo test test-generations check unit integration lint bench clean

setup: $(VENV)/.installed

# Reinstall whenever the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

# A small real detector (YOLOv8n trained on generated shapes; about 2.5 min on 2 cores).
detector: $(DETECTOR)
$(DETECTOR): | setup
	$(PY) -m export.tiny_detector --out $(dir $(DETECTOR)) --quiet
$(DETECTOR_V2): | setup
	$(PY) -m export.tiny_detector --out $(dir $(DETECTOR_V2)) --seed 1 --quiet
# The 3-class YOLOv8n and the YOLOv10n are fine-tuned from $(DETECTOR) (RECIPES); the
# YOLO26n shares almost no layer with it and trains from scratch.
detectors: $(DETECTOR) $(GENERATION_DETECTORS)
$(CANARY_DETECTORS): $(DETECTOR)
# One training at a time: two torch processes on two cores spin against each other.
.cache/detector-yolov8n-3class/detector.pt: | .cache/detector-yolov10n/detector.pt
.cache/detector-%/detector.pt: | setup
	$(PY) -m export.tiny_detector --recipe $* --out $(dir $@) --quiet

demo: setup $(DETECTOR) $(DETECTOR_V2)
	$(PY) -m repo_manager.demo --weights $(DETECTOR) --weights-v2 $(DETECTOR_V2)

# Test processes side by side (pytest-xdist): one test at a time mostly waits on servers,
# loads, drains and analysis intervals; six keep both cores busy throughout (see "How the
# test suite is organised" in the README for what was measured).
TEST_WORKERS ?= 6
UNIT_WORKERS ?= 2

lint: setup
	$(VENV)/bin/ruff check repo_manager export tests bench
	$(VENV)/bin/mypy

# The inner loop (under a minute): lint and the unit tests, no server, no detector.
check: lint unit

unit: setup
	$(PY) -m pytest tests/unit -q -n $(UNIT_WORKERS)

integration: setup $(DETECTOR) $(CANARY_DETECTORS)
	REPO_MANAGER_DETECTOR=$(abspath $(DETECTOR)) $(PY) -m pytest tests/integration -q -rs -n $(TEST_WORKERS) --maxschedchunk 2

# Everything CI runs, from a fresh clone: venv, detector, lint, every test but the
# `generations` ones (skipped with the reason). Lint runs while the detectors train
# (training leaves part of the two cores idle).
test: setup
	$(MAKE) --no-print-directory -j2 $(DETECTOR) $(CANARY_DETECTORS) lint
	REPO_MANAGER_DETECTOR=$(abspath $(DETECTOR)) $(PY) -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --maxschedchunk 2

# Every YOLO generation: the tests marked `generations` (the canary v1 YOLOv8n, v2 YOLO26n,
# v3 YOLOv10n, v4 3-class; a YOLO26n as a first version; six generations' exports) and the
# three exports `make test` runs too. A `-m` expression lifts the default skip of
# `generations` tests (tests/conftest.py); `-k` leaves out `make test`'s cheaper canary,
# which the full one covers. Trains the YOLO26n once (minutes).
GENERATIONS_TESTS := tests/integration/test_generations.py tests/integration/test_generation_exports.py
test-generations: setup $(DETECTOR) $(GENERATION_DETECTORS)
	REPO_MANAGER_DETECTOR=$(abspath $(DETECTOR)) $(PY) -m pytest $(GENERATIONS_TESTS) -m "generations or integration" -k "not canary_of_another_generation" -q -rs --durations=15 -n 2

# Every benchmark, each printing its ratios measured side by side (see BENCHMARKS.md).
# `make bench QUICK=1`: a smoke run of each in a few minutes, not figures to quote.
BENCH_SCRIPTS := router_overhead serving warmup propagation publish_phases memory watch_transport contracts
bench: setup $(DETECTOR)
	@for script in $(BENCH_SCRIPTS); do \
		echo "== bench/$$script.py"; \
		REPO_MANAGER_DETECTOR=$(abspath $(DETECTOR)) $(PY) bench/$$script.py $(if $(QUICK),--quick) || exit 1; \
	done
	$(PY) bench/propagation.py --fleet $(if $(QUICK),--quick)
	$(PY) bench/export.py $(if $(QUICK),--rounds 20)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
