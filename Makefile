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

.PHONY: help setup apt venv venv-tf build test bench demo demo-synth demo-refine clean-cache same-outputs

help:
	@echo "make demo   - pseudo-labels for the bundled vtest.avi clip and their HTML report (installs what it needs)"
	@echo "make demo-synth - synthetic videos with exact ground truth: labels with DIS, DIS + improved rules and imported flow, scored"
	@echo "make demo-refine - the MR-DINOSAUR refinement end to end on generated data, one table of metrics"
	@echo "make test   - the whole test suite (installs what it needs)"
	@echo "make bench  - post-processing, HDBSCAN, RAFT, ViT and whole-labels-run (1 vs all threads) benchmarks"
	@echo "make same-outputs BASELINE=old/mrdino - compare every output of this build with an earlier binary's"

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

# Lints first (clippy.toml, [workspace.lints]: no unwrap/expect outside tests, no panicking Duration constructors,
# no function of the binary over 79 lines), then every test. --release shares the build scripts' outputs with `build`.
test: build
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
	cargo clippy --release --locked --workspace --all-targets -- -D warnings
	MRDINO_PYTHON=$(VENV)/bin/python MRDINO_TF_PYTHON=$(VENV_TF)/bin/python cargo test --release --locked --workspace

# The outputs of this build against an earlier binary's (tests/same_outputs.rs), e.g. BASELINE=old/mrdino.
same-outputs: build
	@test -x "$(BASELINE)" || { echo "usage: make same-outputs BASELINE=path/to/an/earlier/mrdino" >&2; exit 2; }
	MRDINO_BASELINE=$(abspath $(BASELINE)) cargo test --release --locked --workspace --test same_outputs -- --ignored --nocapture

bench: build
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked --workspace --bench postprocess
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked --workspace --bench hdbscan
	MRDINO_PYTHON=$(VENV)/bin/python cargo bench --locked --workspace --bench raft
	cargo bench --locked --workspace --bench vit
	cargo bench --locked --workspace --bench dinosaur
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
	$(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-exact \
	  --flow import --flow-dir $(SYNTH_OUT)/data/flow --quiet
	$(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-dis --flow dis --quiet
	@for rule in fb-check photo-check flow-split; do \
	  $(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-dis-$$rule \
	    --flow dis --$$rule --quiet || exit 1; done
	$(MRDINO) labels --dataset frames --root $(SYNTH_OUT)/data/frames --out $(SYNTH_OUT)/labels-dis-improved \
	  --flow dis --label-rules improved --quiet
	@for run in exact dis dis-fb-check dis-photo-check dis-flow-split dis-improved; do \
	  echo "== $$run =="; \
	  $(MRDINO) eval --labels $(SYNTH_OUT)/labels-$$run --gt $(SYNTH_OUT)/data --gt-format synth \
	    --json $(SYNTH_OUT)/eval-$$run.json || exit 1; done
	$(MRDINO) compare --json $(SYNTH_OUT)/compare.json --eval exact=$(SYNTH_OUT)/eval-exact.json \
	  --eval dis=$(SYNTH_OUT)/eval-dis.json --eval dis+fb-check=$(SYNTH_OUT)/eval-dis-fb-check.json \
	  --eval dis+photo-check=$(SYNTH_OUT)/eval-dis-photo-check.json \
	  --eval dis+flow-split=$(SYNTH_OUT)/eval-dis-flow-split.json --eval dis+improved=$(SYNTH_OUT)/eval-dis-improved.json

# make demo-refine: the whole refinement on generated data (exact flow, so the pseudo-labels are good) with a
# seeded backbone (no weights needed): synth (flat-coloured scenes, large objects) → labels → window features
# (random Fourier features of patch colours plus a position code, 42 px patches) → a small DINOSAUR → stage 1 →
# stage 2 → predictions of each model → one table of metrics (and summary.json).
# The baseline trains four restarts for 500 steps and continues the one whose slots split (`--candidates`).
# REFINE_DEMO_SEED (the scenes) and REFINE_DEMO_THREADS (libtorch's, i.e. the rounding) vary the run.
REFINE_DEMO_OUT ?= outputs/demo-refine
REFINE_DEMO_BACKBONE ?= random-colour-p42-c64-pos
REFINE_DEMO_SEED ?= 3
REFINE_DEMO_THREADS ?= 1
REFINE_DEMO_RUN = --device cpu --torch-threads $(REFINE_DEMO_THREADS) --quiet
demo-refine: build
	@mkdir -p $(REFINE_DEMO_OUT)
	$(MRDINO) synth --out $(REFINE_DEMO_OUT)/data --sequences 4 --frames 24 --seed $(REFINE_DEMO_SEED) --texture flat \
	  --object-size 40
	$(MRDINO) labels --dataset frames --root $(REFINE_DEMO_OUT)/data/frames --out $(REFINE_DEMO_OUT)/labels \
	  --flow import --flow-dir $(REFINE_DEMO_OUT)/data/flow --quiet
	$(MRDINO) features --dataset frames --root $(REFINE_DEMO_OUT)/data/frames --labels $(REFINE_DEMO_OUT)/labels \
	  --views windows --backbone $(REFINE_DEMO_BACKBONE) --out $(REFINE_DEMO_OUT)/features --quiet
	@echo '{"model": {"n_slots": 4, "slot_dim": 32, "decoder_hidden": 128}, "batch_size": 8, "lr": 1e-3, "warmup_steps": 50, "lr_decay_steps": 20000}' \
	  > $(REFINE_DEMO_OUT)/dinosaur.json
	$(MRDINO) train dinosaur --dataset frames --features $(REFINE_DEMO_OUT)/features --config $(REFINE_DEMO_OUT)/dinosaur.json \
	  --steps 5000 --seed 0 --candidates 4 --candidate-steps 500 --out $(REFINE_DEMO_OUT)/baseline $(REFINE_DEMO_RUN)
	$(MRDINO) refine stage1 --from $(REFINE_DEMO_OUT)/baseline --labels $(REFINE_DEMO_OUT)/labels \
	  --features $(REFINE_DEMO_OUT)/features --lr 1e-3 --epochs 30 --out $(REFINE_DEMO_OUT)/stage1 $(REFINE_DEMO_RUN)
	$(MRDINO) refine stage2 --from $(REFINE_DEMO_OUT)/stage1 --labels $(REFINE_DEMO_OUT)/labels \
	  --features $(REFINE_DEMO_OUT)/features --lr 1e-3 --epochs 15 --hidden 128 --out $(REFINE_DEMO_OUT)/stage2 $(REFINE_DEMO_RUN)
	$(MRDINO) eval --labels $(REFINE_DEMO_OUT)/labels --gt $(REFINE_DEMO_OUT)/data --gt-format synth \
	  --json $(REFINE_DEMO_OUT)/eval-labels.json > /dev/null
	for m in baseline stage1 stage2; do \
	  $(MRDINO) infer --model $(REFINE_DEMO_OUT)/$$m --preset kitti --dataset frames --root $(REFINE_DEMO_OUT)/data/frames \
	    --backbone $(REFINE_DEMO_BACKBONE) --out $(REFINE_DEMO_OUT)/predictions-$$m $(REFINE_DEMO_RUN); \
	  $(MRDINO) eval --predictions $(REFINE_DEMO_OUT)/predictions-$$m --gt $(REFINE_DEMO_OUT)/data --gt-format synth \
	    --json $(REFINE_DEMO_OUT)/eval-$$m.json > /dev/null; \
	done
	$(MRDINO) compare --eval "pseudo-labels=$(REFINE_DEMO_OUT)/eval-labels.json" \
	  --eval "DINOSAUR=$(REFINE_DEMO_OUT)/eval-baseline.json" --eval "+ stage 1=$(REFINE_DEMO_OUT)/eval-stage1.json" \
	  --eval "+ stage 2 (MR-DINOSAUR)=$(REFINE_DEMO_OUT)/eval-stage2.json" --json $(REFINE_DEMO_OUT)/summary.json

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

# ---- MR-DINOSAUR refinement ---------------------------------------------------------------------------
#   make kitti-refine KITTI_ROOT=/data/kitti_raw KITTI_EVAL_ROOT=/data/KITTI_test/image_2 KITTI_GT=/data/kitti_gt \
#        BACKBONE_WEIGHTS=dinov2-vitb14.safetensors [BASELINE=dinosaur-kitti.safetensors] [DEVICE=cuda:0]
# labels → window features → baseline DINOSAUR (trained unless BASELINE names a model) → stage 1 → stage 2 →
# predictions on the evaluation images → metrics of the baseline and of stage 2 side by side. Every step is
# resumable and a finished step is skipped on a rerun. Outputs go to $(OUT_ROOT)/<dataset>-refine/.
# <DS>_EVAL_ROOT is read as <DS>_EVAL_DATASET (kitti: `frames`, the benchmark's image_2/ folder, one sequence
# `image_2`, so kitti_gt/image_2/ holds its instance PNGs; tri-pd and movi-e: their own layouts); <DS>_GT is what
# `eval --gt` reads.
BACKBONE ?= dinov2-vitb14
BACKBONE_WEIGHTS ?=
BASELINE ?=
DEVICE ?= auto
REFINE_ARGS ?=
KITTI_GT ?=
TRI_PD_GT ?=
MOVI_GT ?=
KITTI_EVAL_ROOT ?=
TRI_PD_EVAL_ROOT ?=
MOVI_EVAL_ROOT ?=
KITTI_EVAL_DATASET ?= frames
TRI_PD_EVAL_DATASET ?= tri-pd
MOVI_EVAL_DATASET ?= movi-e

define refine_targets
.PHONY: $(1)-refine
$(1)-refine: build
	@[ -n "$$($(2))" ] && [ -n "$$($(3))" ] && [ -n "$$($(5)_EVAL_ROOT)" ] && [ -n "$$(BACKBONE_WEIGHTS)" ] || \
	  { echo "set $(2), $(5)_EVAL_ROOT, $(3) and BACKBONE_WEIGHTS"; exit 2; }
	$$(MRDINO) labels --dataset $(1) --root "$$($(2))" --out $$(OUT_ROOT)/$(1) $$(LABELS_ARGS)
	$$(MRDINO) features --dataset $(1) --root "$$($(2))" --labels $$(OUT_ROOT)/$(1) --views windows \
	  --backbone $$(BACKBONE) --backbone-weights $$(BACKBONE_WEIGHTS) --device $$(DEVICE) --out $$(OUT_ROOT)/$(1)-refine/features
	$$(if $$(BASELINE),,$$(MRDINO) train dinosaur --dataset $(1) --root "$$($(2))" --backbone $$(BACKBONE) \
	  --backbone-weights $$(BACKBONE_WEIGHTS) --device $$(DEVICE) --out $$(OUT_ROOT)/$(1)-refine/baseline)
	$$(MRDINO) refine stage1 --from $$(or $$(BASELINE),$$(OUT_ROOT)/$(1)-refine/baseline) --labels $$(OUT_ROOT)/$(1) \
	  --features $$(OUT_ROOT)/$(1)-refine/features --device $$(DEVICE) --out $$(OUT_ROOT)/$(1)-refine/stage1 $$(REFINE_ARGS)
	$$(MRDINO) refine stage2 --from $$(OUT_ROOT)/$(1)-refine/stage1 --labels $$(OUT_ROOT)/$(1) \
	  --features $$(OUT_ROOT)/$(1)-refine/features --device $$(DEVICE) --out $$(OUT_ROOT)/$(1)-refine/stage2 $$(REFINE_ARGS)
	for m in baseline stage2; do \
	  model=$$$$([ $$$$m = baseline ] && echo "$$(or $$(BASELINE),$$(OUT_ROOT)/$(1)-refine/baseline)" || echo $$(OUT_ROOT)/$(1)-refine/$$$$m); \
	  $$(MRDINO) infer --model $$$$model --preset $(1) --dataset $$($(5)_EVAL_DATASET) --root "$$($(5)_EVAL_ROOT)" --backbone $$(BACKBONE) \
	    --backbone-weights $$(BACKBONE_WEIGHTS) --device $$(DEVICE) --out $$(OUT_ROOT)/$(1)-refine/predictions-$$$$m; \
	  $$(MRDINO) eval --predictions $$(OUT_ROOT)/$(1)-refine/predictions-$$$$m --gt "$$($(3))" --gt-format $(4) \
	    --json $$(OUT_ROOT)/$(1)-refine/eval-$$$$m.json; \
	done
	$$(MRDINO) compare --eval baseline=$$(OUT_ROOT)/$(1)-refine/eval-baseline.json \
	  --eval "MR-DINOSAUR (stage 2)=$$(OUT_ROOT)/$(1)-refine/eval-stage2.json" --json $$(OUT_ROOT)/$(1)-refine/summary.json
endef

$(eval $(call refine_targets,kitti,KITTI_ROOT,KITTI_GT,kitti,KITTI))
$(eval $(call refine_targets,tri-pd,TRI_PD_ROOT,TRI_PD_GT,tri-pd,TRI_PD))
$(eval $(call refine_targets,movi-e,MOVI_ROOT,MOVI_GT,kubric,MOVI))

clean-cache:
	rm -rf $(CARGO_TARGET_DIR)
