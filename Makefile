# Courier: the two commands a newcomer needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= node.yaml
# Debian packages the tests talk to as real peers (dicom3tools: dciodvfy checks DICOMDIRs;
# genisoimage: isoinfo reads disc images back).
PEER_PACKAGES := dcmtk orthanc dicom3tools chromium fonts-noto-cjk genisoimage

.PHONY: run test venv dev peers lint typecheck pytest bench clean screenshots

$(BIN)/courier: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

venv: $(BIN)/courier

$(VENV)/.dev: $(BIN)/courier
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# axe-core for the browser accessibility tests (pinned in tests/browser/package-lock.json).
tests/browser/node_modules/axe-core/axe.min.js: tests/browser/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/browser --no-audit --no-fund --silent; \
	else echo "npm not found: the accessibility tests need it (apt-get install npm)"; fi

dev: $(VENV)/.dev tests/browser/node_modules/axe-core/axe.min.js

## make run: set up .venv and start the node on node.yaml (embedded defaults).
run: venv
	$(BIN)/courier serve --config $(CONFIG)

## Install the test peers from Debian when we are root; otherwise say what is missing.
peers:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(PEER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing test peers:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	  (command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 && \
	    pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start) || true; \
	else \
	  echo "not root: install $(PEER_PACKAGES) yourself for the peer tests"; \
	fi

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev
	$(BIN)/mypy

# Two workers, one per core; each test file stays on one worker (its module fixtures, such
# as an Orthanc peer, start once). Ports come from the OS, temp folders and PostgreSQL
# schemas are per test, advisory locks are keyed per schema. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
pytest: dev tests/browser/node_modules/axe-core/axe.min.js
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

## The README's screenshots, taken by the browser journey test (synthetic data only).
screenshots: dev peers
	COURIER_SCREENSHOTS=1 $(BIN)/pytest tests/browser/test_patient_journey.py tests/browser/test_staff_reports.py --basetemp=/tmp/pt-shots

## make test: set up, install the test peers, run lint, types and every test.
test: dev peers lint typecheck pytest

bench: dev peers
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
