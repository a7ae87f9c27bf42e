# Two entry points (see README): `make serve` and `make test`. Both create .venv and install
# what they need; re-running them is cheap (installs are skipped when the stamp is fresh).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
BUNDLE ?= bundles/default
PORT ?= 3000

.PHONY: serve test install bundle openapi bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a looser spec pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,cpu,llm,test]' uv
	touch $(STAMP)

install: $(STAMP)

# From a fresh clone to a service answering /recommend?explain=true on http://127.0.0.1:$(PORT)
# (builds a bundle on ml-100k when ../shared/data has it, else on the embedded synthetic data).
serve: $(STAMP)
	BENTOML_DO_NOT_TRACK=True $(BIN)/recsae serve --bundle $(BUNDLE) --port $(PORT)

bundle: $(STAMP)
	$(BIN)/recsae train --out $(BUNDLE)

# The whole test suite: starts Redis if none answers, installs Debian chromium if missing.
test: $(STAMP)
	bash scripts/ensure-services.sh
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m pytest -q

openapi: $(STAMP)
	$(BIN)/python -m service.openapi

clean:
	rm -rf .pytest-bundles .pytest_cache test-artifacts
