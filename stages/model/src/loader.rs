//! On-the-fly training features from images ([`ImageSource`], a [`FeatureSource`]): frames decoded, resized,
//! randomly cropped and flipped on CPU threads, batches handed through a bounded channel to the frozen backbone on
//! the device.
//!
//! Image preparation ([`prepare_image`]) is the reference's training transform on tensors (torchvision 0.15):
//! resize with libtorch bicubic (`align_corners = False`, no antialias), clamped to [0, 1], a crop at a random
//! offset, a horizontal flip with probability ½ when asked. Every random choice of sample n comes from
//! [`sample_rng`]`(seed, n)` and the view it draws from [`Sampler`]`(seed)`, so a batch does not depend on the
//! number of decoding threads or on prefetching: a resumed run sees the same batches as an uninterrupted one.
//!
//! Threads: one producer thread owns a rayon pool of `workers` threads (all cores when `None`) and sends batches
//! (first sample, images) through a channel of depth 2; asking for another first sample than the next one restarts
//! it there. The producer is joined before a new one starts and when the source is dropped, so no decode is still
//! inside OpenCV or libtorch while the process exits (that crashed with SIGSEGV at exit).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use mrdino_datasets::decode::read_processed;
use mrdino_datasets::{list_sequences, DatasetError, DatasetKind, Processing, SourceOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::backbone::Backbone;
use crate::train::{sample_rng, FeatureSource, Sampler, TrainError};

/// Image preparation before the backbone: the resize, then the random crop (equal to the resize = no crop) and
/// the random flip. Sizes in pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentParams {
    pub resize_height: i64,
    pub resize_width: i64,
    /// Random crop size; equal to the resize size = no crop.
    pub crop_height: i64,
    pub crop_width: i64,
    pub random_flip: bool,
}

/// Why images cannot be prepared or batched; each names the file, sequence or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot list {root}: {source}")]
    List { root: PathBuf, source: DatasetError },
    #[error("{sequence}: video input is not supported for training (write its frames as images)")]
    Video { sequence: String },
    #[error("{root}: no training images")]
    NoImages { root: PathBuf },
    #[error(
        "crop {crop_width}x{crop_height} must be positive, fit the resize {resize_width}x{resize_height} and be a \
         multiple of the backbone's patch {patch_px}"
    )]
    Crop {
        crop_height: i64,
        crop_width: i64,
        resize_height: i64,
        resize_width: i64,
        patch_px: i64,
    },
    #[error(transparent)]
    Decode(#[from] DatasetError),
    #[error("{path}: {source}")]
    Torch { path: PathBuf, source: tch::TchError },
    #[error("cannot start the decoding threads")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    #[error("the decoding thread stopped")]
    Stopped,
    #[error("expected the batch at sample {expected}, the decoding thread sent sample {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("backbone: {0}")]
    Backbone(#[from] crate::backbone::FeatureError),
    #[error(transparent)]
    Batch(#[from] tch::TchError),
}

/// One training image: decode, resize to the preset size (bicubic, `align_corners = False`, no antialias),
/// clamp to [0, 1], crop at a random offset, flip with probability ½ (when `random_flip`); sample `sample`'s
/// randomness. (3, crop_h, crop_w) float32 on the CPU.
pub fn prepare_image(path: &Path, a: &AugmentParams, seed: i64, sample: u64) -> Result<Tensor, LoaderError> {
    let (rgb, _) = read_processed(path, &Processing::Native)?;
    let torch = |source| LoaderError::Torch {
        path: path.to_path_buf(),
        source,
    };
    let mut rng = sample_rng(seed, sample);
    let y = rng.below((a.resize_height - a.crop_height + 1).max(1) as u64) as i64;
    let x = rng.below((a.resize_width - a.crop_width + 1).max(1) as u64) as i64;
    let flip = a.random_flip && rng.next_f64() < 0.5;
    let image = (|| {
        let img = Tensor::f_from_data_size(&rgb.data, &[rgb.height as i64, rgb.width as i64, 3], Kind::Uint8)?
            .f_permute([2, 0, 1])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_unsqueeze(0)?
            .f_upsample_bicubic2d([a.resize_height, a.resize_width], false, None, None)?
            .f_clamp(0.0, 1.0)?
            .f_squeeze_dim(0)?
            .f_narrow(1, y, a.crop_height)?
            .f_narrow(2, x, a.crop_width)?;
        if flip {
            img.f_flip([2])
        } else {
            img.f_contiguous()
        }
    })();
    image.map_err(torch)
}

/// A batch in flight: its first sample and its images (B, 3, crop_h, crop_w).
type Sent = (u64, Result<Tensor, LoaderError>);

/// See the module docs.
pub struct ImageSource {
    backbone: Box<dyn Backbone>,
    n_patches: i64,
    receiver: Option<(u64, Receiver<Sent>)>,
    producer: Option<JoinHandle<()>>,
    paths: Arc<Vec<PathBuf>>,
    augment: AugmentParams,
    seed: i64,
    workers: Option<usize>,
}

/// The image files of every sequence of a dataset, in the order of the listing.
fn image_paths(kind: DatasetKind, root: &Path) -> Result<Vec<PathBuf>, LoaderError> {
    let sequences = list_sequences(&SourceOptions {
        kind,
        root: root.to_path_buf(),
        cameras: None,
        processing: Some(Processing::Native),
    })
    .map_err(|source| LoaderError::List {
        root: root.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    for s in &sequences {
        let files = s
            .image_files()
            .ok_or_else(|| LoaderError::Video { sequence: s.id.clone() })?;
        paths.extend(files.iter().map(|f| f.path.clone()));
    }
    Ok(paths)
}

impl ImageSource {
    /// The images of dataset `kind` at `root` through `backbone`, prepared as `augment` says.
    pub fn new(
        kind: DatasetKind,
        root: &Path,
        backbone: Box<dyn Backbone>,
        augment: &AugmentParams,
        seed: i64,
        workers: Option<usize>,
    ) -> Result<Self, LoaderError> {
        let a = augment;
        let ps = backbone.patch_size();
        let fits =
            a.crop_height > 0 && a.crop_width > 0 && a.crop_height <= a.resize_height && a.crop_width <= a.resize_width;
        if !fits || a.crop_height % ps != 0 || a.crop_width % ps != 0 {
            return Err(LoaderError::Crop {
                crop_height: a.crop_height,
                crop_width: a.crop_width,
                resize_height: a.resize_height,
                resize_width: a.resize_width,
                patch_px: ps,
            });
        }
        let paths = image_paths(kind, root)?;
        if paths.is_empty() {
            return Err(LoaderError::NoImages {
                root: root.to_path_buf(),
            });
        }
        Ok(Self {
            n_patches: (a.crop_height / ps) * (a.crop_width / ps),
            backbone,
            receiver: None,
            producer: None,
            paths: Arc::new(paths),
            augment: a.clone(),
            seed,
            workers,
        })
    }

    /// Stops the decoding thread: dropping the receiver makes its next send fail, then it is joined.
    fn stop(&mut self) {
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }

    /// (Re)starts the decoding thread at `first_sample`.
    fn start(&mut self, first_sample: u64, batch_size: usize) -> Result<(), LoaderError> {
        self.stop();
        let (tx, rx) = sync_channel(2);
        let paths = self.paths.clone();
        let augment = self.augment.clone();
        let seed = self.seed;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers.unwrap_or(0))
            .build()
            .map_err(LoaderError::Threads)?;
        self.producer = Some(std::thread::spawn(move || {
            let mut sampler = Sampler::new(seed, paths.len());
            let mut first = first_sample;
            loop {
                let views: Vec<usize> = (0..batch_size as u64).map(|b| sampler.view(first + b)).collect();
                let images: Vec<Result<Tensor, LoaderError>> = pool.install(|| {
                    views
                        .par_iter()
                        .enumerate()
                        .map(|(b, &v)| prepare_image(&paths[v], &augment, seed, first + b as u64))
                        .collect()
                });
                let batch = images
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|v| Ok(Tensor::f_stack(&v, 0)?));
                if tx.send((first, batch)).is_err() {
                    return;
                }
                first += batch_size as u64;
            }
        }));
        self.receiver = Some((first_sample, rx));
        Ok(())
    }

    /// The prepared images of the samples `first_sample ..` (B, 3, crop_h, crop_w).
    fn images(&mut self, first_sample: u64, batch_size: usize) -> Result<Tensor, LoaderError> {
        let fresh = !matches!(&self.receiver, Some((next, _)) if *next == first_sample);
        if fresh {
            self.start(first_sample, batch_size)?;
        }
        let Some((next, rx)) = &mut self.receiver else {
            return Err(LoaderError::Stopped);
        };
        let (first, images) = rx.recv().map_err(|_| LoaderError::Stopped)?;
        if first != first_sample {
            return Err(LoaderError::OutOfOrder {
                expected: first_sample,
                got: first,
            });
        }
        *next = first_sample + batch_size as u64;
        images
    }
}

impl Drop for ImageSource {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FeatureSource for ImageSource {
    fn n_views(&self) -> usize {
        self.paths.len()
    }

    fn n_patches(&self) -> i64 {
        self.n_patches
    }

    fn channels(&self) -> i64 {
        self.backbone.feature_dim()
    }

    fn backbone_name(&self) -> String {
        self.backbone.name().to_string()
    }

    fn backbone_id(&self) -> String {
        self.backbone.identity().id.clone()
    }

    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<Tensor, TrainError> {
        let images = self.images(first_sample, batch_size)?;
        let features = self.backbone.features(&images).map_err(LoaderError::Backbone)?;
        let features = features
            .f_to_kind(Kind::Float)
            .and_then(|f| f.f_to_device(device))
            .map_err(LoaderError::Batch)?;
        Ok(features)
    }
}
