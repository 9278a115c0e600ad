//! What each refinement stage trains, and the stage-2 head's seeded draw and restore
//! (`mrdino_model::refine_train`). A test binary of its own: the head is drawn from libtorch's global generator
//! right after `manual_seed`, which other tests drawing in parallel threads of one process would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;

use mrdino_model::dinosaur::{Dinosaur, DinosaurConfig};
use mrdino_model::optim::{Adam, AdamConfig};
use mrdino_model::refine::Stage2Options;
use mrdino_model::refine_train::{refine_step, trained_parameters, RefineStep, TrainableHead, GROUPING_PREFIX};
use mrdino_model::refined::ModelStage;
use mrdino_outputs::checkpoint::TensorFile;
use tch::{Device, Kind, Tensor};

#[test]
fn each_stage_trains_only_its_tensors_and_the_head_restores() {
    tch::manual_seed(1);
    let config = DinosaurConfig::custom(3, 8, 6, 16, 4);
    let model = Dinosaur::new(config, Device::Cpu).unwrap();
    let trained = trained_parameters(&model, ModelStage::Stage1).unwrap();
    assert!(!trained.is_empty() && trained.iter().all(|(n, _)| n.starts_with(GROUPING_PREFIX)));
    let frozen: Vec<_> = model
        .named_parameters()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    assert!(frozen.iter().all(|(n, _)| !n.starts_with(GROUPING_PREFIX)) && !frozen.is_empty());
    assert!(trained_parameters(&model, ModelStage::Baseline).is_err());

    let head = TrainableHead::new(8, 5, 3, Device::Cpu).unwrap();
    let before: Vec<Tensor> = head.named_parameters().iter().map(|(_, t)| t.copy()).collect();
    let mut adam = Adam::new(head.named_parameters(), AdamConfig::default());
    let features = Tensor::randn([2, 4, 6], (Kind::Float, Device::Cpu));
    let masks = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
    let _ = masks.narrow(2, 0, 2).f_fill_(1.0).unwrap();
    let step = RefineStep {
        model: &model,
        head: Some((&head, Stage2Options::kitti())),
        seed: 0,
        lr: 1e-2,
        clip_grad_norm: 1.0,
    };
    let metrics = refine_step(&step, &mut adam, &features, &masks, 0).unwrap();
    assert!(metrics.loss.is_finite() && metrics.grad_norm > 0.0);
    let file = TensorFile {
        tensors: head.raw_parameters().unwrap(),
        ..TensorFile::default()
    };
    let fresh = TrainableHead::new(8, 5, 3, Device::Cpu).unwrap();
    for ((_, a), b) in fresh.named_parameters().iter().zip(&before) {
        assert!(a.equal(b), "the same seed draws the same head");
    }
    fresh.restore(&file, Path::new("c")).unwrap();
    for ((_, a), (_, b)) in fresh.named_parameters().iter().zip(head.named_parameters().iter()) {
        assert!(a.equal(b));
    }
    let wider = TrainableHead::new(8, 6, 3, Device::Cpu).unwrap();
    let err = wider.restore(&file, Path::new("c")).unwrap_err().to_string();
    assert!(
        err.contains("object_decoder.slot_decoder.0") && err.contains("shape"),
        "{err}"
    );
}
