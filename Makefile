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
test: $(STAMP)
	bash scripts/ensure-services.sh
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m pytest -q

openapi: $(STAMP)
	$(BIN)/python -m service.openapi

clean:
	rm -rf .pytest-bundles .pytest_cache test-artifacts
