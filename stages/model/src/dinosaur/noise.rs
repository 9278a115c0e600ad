//! Reproducible slot noise.
//!
//! The reference draws fresh `randn_like` noise for the slots on every forward (also at evaluation), so its
//! predictions cannot be reproduced. mrdino fixes the rule: the noise of the image with index `i` (its position
//! in the run's sorted order, or for training the global sample counter) is
//! `randn(n_views, K, D)` in float32 drawn on libtorch's CPU generator right after `manual_seed(seed + i)`, then
//! moved to the device. That is exactly what `torch.manual_seed(S + i); torch.randn(n_views, K, D)` gives in
//! PyTorch, so the noise depends neither on batching, shards nor threads, and another implementation can
//! reproduce it.
//!
//! Side effect: the global CPU generator of libtorch is reseeded; draws are serialised by a process-wide lock so
//! two threads drawing noise at once cannot interleave their seeds.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

static GENERATOR: Mutex<()> = Mutex::new(());

/// `draw()` right after `tch::manual_seed(seed)`, holding the lock of the global generator, so that no other
/// seeded draw of this crate interleaves with it (the stage-2 head's initialisation).
pub fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// Noise for the images `image_indices` (in that order): (len · n_views, K, D) float32 on `device`, image
/// `image_indices[j]` owning rows `j·n_views .. (j+1)·n_views`.
pub fn slot_noise(
    seed: i64,
    image_indices: &[i64],
    n_views: i64,
    n_slots: i64,
    slot_dim: i64,
    device: Device,
) -> Result<Tensor, tch::TchError> {
    let _guard = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let draws: Vec<Tensor> = image_indices
        .iter()
        .map(|&i| {
            tch::manual_seed(seed.wrapping_add(i));
            Tensor::f_randn([n_views, n_slots, slot_dim], (Kind::Float, Device::Cpu))
        })
        .collect::<Result<_, _>>()?;
    if draws.is_empty() {
        return Tensor::f_zeros([0, n_slots, slot_dim], (Kind::Float, device));
    }
    Tensor::f_cat(&draws, 0)?.f_to_device(device)
}
