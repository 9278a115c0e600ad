# mrdino — build, test, demo and per-dataset batch jobs.
#
# Everything heavy lives outside the clone so fresh clones on the same machine reuse it:
#   MRDINO_CACHE (default ~/.cache/mrdino) holds the Python venv (libtorch 2.13.0 for tch, test references),
#   a second venv with TensorFlow (the TF SMURF converter and its test) and the cargo target directory. All are
#   created on first use; every step below is idempotent.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

MRDINO_CACHE ?= $(HOME)/.cache/mrdino
VENV ?= $(MRDINO_CACHE)/venv
VENV_TF ?= $(MRDINO_CACHE)/venv-tf
CARGO_TARGET_DIR ?= $(MRDINO_CACHE)/target
PYTHON_BOOTSTRAP ?= python3
APT_PACKAGES := libopencv-dev clang libclang-dev pkg-config opencv-doc chromium

export CARGO_TARGET_DIR
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)

MRDINO := $(CARGO_TARGET_DIR)/release/mrdino
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_STAMP := $(MRDINO_CACHE)/.apt-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-12)
VENV_STAMP := $(VENV)/.stamp-$(shell md5sum < tools/requirements.txt | cut -c1-12)
VENV_TF_STAMP := $(VENV_TF)/.stamp-$(shell md5sum < tools/requirements-tf.txt | cut -c1-12)

.PHONY: help setup apt venv venv-tf build test bench demo demo-synth clean-cache

help:
	@echo "make demo   - pseudo-labels for the bundled vtest.avi clip and their HTML report (installs what it needs)"
	@echo "make demo-synth - synthetic videos with exact ground truth: labels with DIS and imported flow, scored"
	@echo "make test   - the whole test suite (installs what it needs)"
	@echo "make bench  - post-processing, HDBSCAN, RAFT, ViT and whole-labels-run (1 vs all threads) benchmarks"

setup: apt venv venv-tf

apt: $(APT_STAMP)
$(APT_STAMP):
	@mkdir -p $(MRDINO_CACHE)
	@n=$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -c 'install ok installed' || true); \
	if [ "$$n" != "$(words $(APT_PACKAGES))" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): tools/requirements.txt
	@mkdir -p $(MRDINO_CACHE)
	@[ -x $(VENV)/bin/python ] || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt
	@rm -f $(VENV)/.stamp-* && touch $@

venv-tf: $(VENV_TF_STAMP)
$(VENV_TF_STAMP): tools/requirements-tf.txt
	@mkdir -p $(MRDINO_CACHE)
	@[ -x $(VENV_TF)/bin/python ] || $(PYTHON_BOOTSTRAP) -m venv $(VENV_TF)
	$(VENV_TF)/bin/pip install -q --disable-pip-version-check -r tools/requirements-tf.txt
	@rm -f $(VENV_TF)/.stamp-* && touch $@

build: setup
	cargo build --release --locked -p mrdino

test: build
	MRDINO_PYTHON=$(VENV)/bin/python MRDINO_TF_PYTHON=$(VENV_TF)/bin/python cargo test --release --locked --workspace

bench: build
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked -p mrdino --bench postprocess
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked -p mrdino-stages --bench hdbscan
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked -p mrdino-stages --bench raft
	cargo bench --locked -p mrdino-model --bench vit
	cargo bench --locked -p mrdino-model --bench dinosaur
	tools/bench/labels_threads.sh $(MRDINO) $(VENV)/bin/python $(MRDINO_CACHE)/bench-labels

DEMO_VIDEO ?= /usr/share/doc/opencv-doc/examples/data/vtest.avi
DEMO_OUT ?= outputs/demo
demo: build
	$(MRDINO) labels --dataset video --root $(DEMO_VIDEO) --out $(DEMO_OUT) --overlays 6
	$(MRDINO) report --labels $(DEMO_OUT) --out $(DEMO_OUT)/report
	@echo "Parquet tables: $(DEMO_OUT)/frames $(DEMO_OUT)/instances; overlays: $(DEMO_OUT)/overlays"
	@echo "Report: $(DEMO_OUT)/report/index.html"

SYNTH_OUT ?= outputs/demo-synth
demo-synth: build
	$(MRDINO) synth --out $(SYNTH_OUT)/data
	$(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-dis --flow dis --quiet
	$(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-exact \
	  --flow import --flow-dir $(SYNTH_OUT)/data/flow --quiet
	@echo "== DIS flow =="
	$(MRDINO) eval --labels $(SYNTH_OUT)/labels-dis --gt $(SYNTH_OUT)/data --gt-format synth
	@echo "== exact (imported) flow =="
	$(MRDINO) eval --labels $(SYNTH_OUT)/labels-exact --gt $(SYNTH_OUT)/data --gt-format synth

# ---- Per-dataset batch jobs --------------------------------------------------------------------------
#   make kitti KITTI_ROOT=/data/kitti_raw           all sequences, resumable (rerun after any crash)
#   make kitti-shard KITTI_ROOT=… SHARD=3 NUM_SHARDS=16   one shard of a job array
#   make kitti-status / make kitti-finalize
# Outputs go to $(OUT_ROOT)/<dataset>/; LABELS_ARGS adds flags (e.g. --flow smurf --weights FILE).
OUT_ROOT ?= outputs
LABELS_ARGS ?=
KITTI_ROOT ?=
TRI_PD_ROOT ?=
MOVI_ROOT ?=

define dataset_targets
.PHONY: $(1) $(1)-plan $(1)-shard $(1)-status $(1)-finalize
$(1): build
	@[ -n "$$($(2))" ] || { echo "set $(2)=<dataset root>"; exit 2; }
	$$(MRDINO) labels --dataset $(1) --root "$$($(2))" --out $$(OUT_ROOT)/$(1) $$(LABELS_ARGS)
$(1)-plan: build
	@[ -n "$$($(2))" ] || { echo "set $(2)=<dataset root>"; exit 2; }
	$$(MRDINO) plan --dataset $(1) --root "$$($(2))" --out $$(OUT_ROOT)/$(1) $$(LABELS_ARGS)
$(1)-shard: build
	@[ -n "$$($(2))" ] && [ -n "$$(SHARD)" ] && [ -n "$$(NUM_SHARDS)" ] || { echo "set $(2), SHARD and NUM_SHARDS"; exit 2; }
	$$(MRDINO) labels --dataset $(1) --root "$$($(2))" --out $$(OUT_ROOT)/$(1) --shard $$(SHARD)/$$(NUM_SHARDS) $$(LABELS_ARGS)
$(1)-status: build
	$$(MRDINO) status --out $$(OUT_ROOT)/$(1) $$(if $$(NUM_SHARDS),--num-shards $$(NUM_SHARDS))
$(1)-finalize: build
	$$(MRDINO) finalize --out $$(OUT_ROOT)/$(1)
endef

$(eval $(call dataset_targets,kitti,KITTI_ROOT))
$(eval $(call dataset_targets,tri-pd,TRI_PD_ROOT))
$(eval $(call dataset_targets,movi-e,MOVI_ROOT))

clean-cache:
	rm -rf $(CARGO_TARGET_DIR)
