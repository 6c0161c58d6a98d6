# Two entry points: `make run` (the main job on its default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@test -d /usr/share/datasets/fashion-mnist || apt-get install -y -q dataset-fashion-mnist \
		>/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q \
		dataset-fashion-mnist >/dev/null 2>&1) || echo "note: could not install Debian's \
		dataset-fashion-mnist; 'pacnet run fashion' needs it (the tests do not)"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q postgresql >/dev/null 2>&1) || echo "note: could not install \
		Debian's postgresql; the tests of the PostgreSQL results store will fail without it"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pacnet reproduce friedman --config configs/friedman-quick.toml \
		--db runs/make-run.sqlite --out runs/make-run
	$(BIN)/pacnet report --db runs/make-run.sqlite --out runs/make-run/report

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests

clean:
	rm -rf runs .cache .pytest_cache
