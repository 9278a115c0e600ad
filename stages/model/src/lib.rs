//! The model half of mrdino, on libtorch (tch): frozen ViT backbones, the DINOSAUR slot model and what the
//! MR-DINOSAUR refinement needs (matching, losses, window join and merge).
//!
//! A sibling of `mrdino-stages` under `stages/`: the pseudo-label stages and the model stages are split along
//! the data flow (pixels → labels, then labels + features → slots), so each crate stays readable on its own.
//! Like every stage, nothing here knows about files beyond explicit weight loaders, threads or the command line.
//!
//! - [`device`]: `--device auto|cpu|cuda:N` and the precision of a forward;
//! - [`vit`]: one ViT for DINOv2 (± registers), DINOv1, CLIP's image tower and MAE, with the official
//!   position-embedding resizes;
//! - [`views`], [`windows`]: training views from pseudo-labels, inference windows, their join and merge;
//! - [`matching`], [`refine`], [`refine_train`], [`refine_views`]: the Hungarian assignment, the stage-1 / stage-2
//!   losses, one refinement step with what each stage trains, and the refinement's training views and batches;
//! - [`refined`]: a model file as inference loads it (DINOSAUR ± the stage-2 deactivation head);
//! - [`clip_tokenizer`], [`clip_text`], [`talk2dino`]: CLIP's BPE tokenizer and text tower, Talk2DINO's ψ,
//!   class embeddings and masks;
//! - [`dinosaur`], [`backbone`], [`optim`], [`train`], [`tensors`]: the DINOSAUR slot model, the backbone
//!   trait it trains on, Adam with exportable state, one training step and tensor ↔ file conversion;
//! - [`collapse`]: whether a slot model's slots collapsed into one, from the figures of its training steps, and
//!   the choice among restarts;
//! - [`loader`], [`memory`]: on-the-fly training images (decoded and augmented on CPU threads) and the memory
//!   a training step needs, estimated from shapes, against what the machine has;
//! - [`layers`]: the one `Linear` and `LayerNorm` (from loaded weights, or trainable);
//! - [`input`]: the one error of a function handed a tensor argument it does not take;
//! - [`weights`]: the one source every weight loader reads (file or model file), with the one key/shape check;
//! - [`resnet`], [`similarity`], [`variants`], [`representations`]: SwaV's ResNet-50, the robustness analysis'
//!   statistics, image variants and the backbones' pooled representations of them.

pub mod backbone;
pub mod clip_text;
pub mod clip_tokenizer;
pub mod collapse;
pub mod device;
pub mod dinosaur;
pub mod encode;
pub mod input;
pub mod layers;
pub mod loader;
pub mod matching;
pub mod memory;
pub mod optim;
pub mod patch_scale;
pub mod predict;
pub mod refine;
pub mod refine_train;
pub mod refine_views;
pub mod refined;
pub mod representations;
pub mod resnet;
pub mod similarity;
pub mod talk2dino;
pub mod tensors;
pub mod train;
pub mod variants;
pub mod views;
pub mod vit;
pub mod weights;
pub mod windows;
