//! The model half of mrdino, on libtorch (tch): frozen ViT backbones, the DINOSAUR slot model and what the
//! MR-DINOSAUR refinement needs (matching, losses, window join and merge).
//!
//! A sibling of `mrdino-stages` under `stages/`: the pseudo-label stages and the model stages are split along
//! the data flow (pixels → labels, then labels + features → slots), so each crate stays readable on its own.
//! Like every stage, nothing here knows about files beyond explicit weight loaders, threads or the command line.

pub mod backbone;
pub mod dinosaur;
pub mod optim;
pub mod tensors;
pub mod train;
