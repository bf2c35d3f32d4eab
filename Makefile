# medkit: two commands do everything. `make demo` runs the embedded stack, `make test` runs all tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean histories

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medkit dev

test: $(STAMP)
	bash scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .medkit

# Re-record tests/histories after a deliberate workflow change (the replay tests then guard it).
histories: $(STAMP)
	MEDKIT_RECORD_HISTORIES=1 $(BIN)/pytest -q tests/test_recovery_paths.py tests/test_fleet_coordinator.py
