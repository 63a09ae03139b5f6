# Entry points for a fresh machine. `make run` sets up, indexes SciFact (once), exports and
# parity-checks the ONNX query encoder (once) and serves on the fastest checked backend;
# `make test` sets up and runs the test suite. Paths are overridable: make run DATA=/data.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
INDEX_ROOT ?= artifacts/indexes/scifact
# Encoder backend of index builds (the passage vectors): torch (the reference), onnx or onnx-int8.
# An ONNX backend is exported and parity-checked on SciFact test first (md2pr-export; cached).
BACKEND ?= torch
# Backend of the service's query encoder: auto = the fastest one whose ONNX export passed its
# parity check (serve runs `make export` first: once, then cached), else torch; or name one.
QUERY_BACKEND ?= auto
HOST ?= 127.0.0.1
PORT ?= 8000
export MD2PR_DATA_DIR := $(abspath $(DATA))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run export index serve test evaluate fit-fusion experiment clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0   # the local CPU wheel, before anything can pull a CUDA build
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

export: install  ## ONNX export of the default encoder + its parity record on SciFact test (reused when up to date)
	$(BIN)/md2pr-export --parity-dataset $(DATA)/scifact --split test

index: install $(if $(filter torch,$(BACKEND)),,export)  ## build and publish the SciFact index unless one is published already
	$(BIN)/md2pr-build-index --corpus $(DATA)/scifact --index-root $(INDEX_ROOT) --backend $(BACKEND) --if-missing

serve: index $(if $(filter torch,$(QUERY_BACKEND)),,export)  ## serve INDEX_ROOT on HOST:PORT (query encoder on QUERY_BACKEND)
	MD2PR_INDEX=$(INDEX_ROOT) MD2PR_BACKEND=$(QUERY_BACKEND) $(BIN)/md2pr-serve --host $(HOST) --port $(PORT)

run: serve

test: install
	$(BIN)/python -m pytest -q

evaluate: index  ## SciFact test metrics of BM25 and the dense index
	$(BIN)/md2pr-evaluate --dataset $(DATA)/scifact --split test --retriever bm25 --retriever dense \
		--index $(INDEX_ROOT) --output artifacts/eval/scifact-test.json

fit-fusion: index  ## fit hybrid fusion weights on SciFact train:dev and publish them as a new version
	$(BIN)/md2pr-fit-fusion --index-root $(INDEX_ROOT) --dataset $(DATA)/scifact --split train:dev

EXPERIMENT ?= scifact
BUDGET ?= cpu
experiment: install  ## the whole MD2PR experiment (resumable; finished steps are cached): make experiment EXPERIMENT=dl BUDGET=gpu
	$(BIN)/md2pr-experiment --config $(EXPERIMENT) --budget $(BUDGET)

clean:
	rm -rf $(VENV) artifacts
