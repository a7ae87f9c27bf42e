# Two entry points (see README): `make serve` and `make test`. Both create .venv and install
# what they need; re-running them is cheap (installs are skipped when the stamp is fresh).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py service/_hotpath.c | sha256sum | cut -c1-12)
BUNDLE ?= bundles/default
PORT ?= 3000

.PHONY: serve test install bundle openapi bench clean

# One line before each long step instead of pip's silence; torch first, pinned: a looser spec
# pulls a multi-GB CUDA build. The editable install's "Editable installation" notice is only
# information (setuptools has no quieter channel for it), so it is filtered.
$(STAMP): pyproject.toml setup.py service/_hotpath.c
	@echo "installing into $(VENV) (a few minutes the first time, 1.4 GB; skipped while pyproject.toml is unchanged)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "  torch 2.13.0 (CPU build) ..."
	@$(BIN)/python -m pip install -q torch==2.13.0
	@echo "  recsae, BentoML, ONNX Runtime, faiss (the ann extra) and the test tools ..."
	@PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e '.[train,cpu,llm,test,ann]' uv
	@touch $(STAMP)
	@echo "installed: $(BIN)/recsae"

install: $(STAMP)

# From a fresh clone to a service answering /recommend?explain=true on http://127.0.0.1:$(PORT).
# Only the default bundle is built here when missing (on ml-100k when ../shared/data has it, else
# on the embedded synthetic data); `recsae serve` itself never trains. Uses the local Redis when
# one answers on 127.0.0.1:6379 (its first line says which), in-process otherwise.
serve: $(STAMP)
	@if [ "$(BUNDLE)" = "bundles/default" ] && [ ! -f bundles/default/manifest.json ]; then \
	  echo "make serve: no bundle at bundles/default: building the default bundle first (recsae train --out bundles/default)"; \
	  $(BIN)/recsae train --out bundles/default || exit 1; fi
	BENTOML_DO_NOT_TRACK=True $(BIN)/recsae serve --bundle $(BUNDLE) --port $(PORT) --redis auto

bundle: $(STAMP)
	$(BIN)/recsae train --out $(BUNDLE)

# The whole test suite: starts Redis if none answers, installs Debian chromium if missing.
# The first run (and the first after a change under recsae/ or models/) builds small test bundles
# before the tests that need them; each build prints a line when it starts and ends.
test: $(STAMP)
	@bash scripts/ensure-services.sh
	@echo "running the test suite: test bundles are built on first use (minutes, announced), then cached in .pytest-bundles/"
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m pytest -q

openapi: $(STAMP)
	$(BIN)/python -m service.openapi

clean:
	rm -rf .pytest-bundles .pytest_cache test-artifacts
