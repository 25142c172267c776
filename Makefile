# Pomona: `make train export` then `make test` on a fresh clone; nothing to install by hand.
# Every target creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= artifacts
TRAIN_ARGS ?=
EXPORT_ARGS ?=
SERVE_ARGS ?=
SWEEP_ARGS ?=

.PHONY: help install train export test lint typecheck pytest bench bench-peers sweep serve docs clean

help:
	@echo "make train export   train on the bundled crop data, write $(OUT)/ artifacts"
	@echo "make test           ruff, mypy and pytest"
	@echo "make lint           ruff check and ruff format --check"
	@echo "make bench          speed ratios against references measured in the same run"
	@echo "make bench-peers    the serving benchmark with MLServer too (installed on first use)"
	@echo "make sweep          choose the training defaults over public data sets (minutes)"
	@echo "make serve          serve $(OUT)/model.onnx on 127.0.0.1:8000"
	@echo "make docs           regenerate docs/commands.md from the --help texts"
	@echo "make clean          remove .venv, $(OUT)/ and caches"

install: $(STAMP)

# torch is pinned by constraints.txt to the CPU build this repository is tested with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,export,serve,fast,ray,dev,grpc]'
	@touch $@

train: $(STAMP)
	$(BIN)/pomona train --out $(OUT) $(TRAIN_ARGS)

export: $(STAMP)
	$(BIN)/pomona export --checkpoint $(OUT)/checkpoint.pt --out $(OUT) $(EXPORT_ARGS)

# mypy cannot follow setuptools' package-dir mapping; a symlink tree shows it the layout.
.typing/pomona:
	@mkdir -p .typing/pomona
	@for pkg in train export runtime; do ln -sfn ../../$$pkg .typing/pomona/$$pkg; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) .typing/pomona
	MYPYPATH=.typing $(BIN)/mypy -p pomona.train -p pomona.export -p pomona.runtime

# KServe's client pins packages older than ours (pandas<3, psutil<6): its own virtualenv.
KSERVE_STAMP := .venv-kserve/.installed
$(KSERVE_STAMP): tests/runtime/serve/kserve-requirements.txt
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install --quiet -r $<
	@touch $@

pytest: $(STAMP) $(KSERVE_STAMP)
	POMONA_ALL_EXTRAS=1 $(BIN)/pytest

test: lint typecheck pytest

# The serving benchmark drives load with wrk; as root with apt-get it is installed here.
WRK := command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk not found (apt-get install wrk): the serving benchmark falls back to a Python load loop"; fi; }

bench: $(STAMP)
	@$(WRK)
	$(BIN)/python -m bench

# Peer servers (MLServer, in a virtualenv of its own under ~/.cache) only when asked.
bench-peers: $(STAMP)
	@$(WRK)
	$(BIN)/python -m bench.serve --peers

# The data sets ship inside scikit-learn and statsmodels (the sweep extra); no downloads.
sweep: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[sweep]'
	$(BIN)/python -m bench.defaults_sweep $(SWEEP_ARGS)

serve: $(STAMP)
	$(BIN)/pomona serve $(OUT)/model.onnx $(SERVE_ARGS)

# The command reference is generated from --help; a test fails when it is stale.
docs: $(STAMP)
	$(BIN)/python -m tools.commands_doc

clean:
	rm -rf $(VENV) .venv-kserve .typing $(OUT) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/out
