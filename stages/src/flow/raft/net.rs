//! The RAFT forward pass as plain functions over a key → tensor map.
//!
//! Reproduces torchvision's `RAFT.forward` (and therefore princeton RAFT and, after the convcorr1 transpose, the
//! SMURF port): feature encoder on both frames stacked along the batch, context encoder on frame 1 split into
//! tanh(hidden) / ReLU(context), an all-pairs correlation pyramid pooled 3 times, and `iterations` GRU updates
//! with an x-major correlation lookup (`grid_sample`, bilinear, zeros padding, align_corners=True, each level
//! normalised by its own size). Only the last iteration's flow is upsampled (convex for raft-large,
//! 8·bilinear(align_corners=True) for raft-small), since intermediate flows are never returned.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::weights::{Architecture, Block, EncoderSpec, Norm};

type TResult<T> = Result<T, tch::TchError>;

pub struct Net<'a> {
    pub arch: &'a Architecture,
    pub w: &'a HashMap<String, Tensor>,
}

impl Net<'_> {
    fn get(&self, key: &str) -> TResult<&Tensor> {
        self.w
            .get(key)
            .ok_or_else(|| tch::TchError::Kind(format!("weight `{key}` was not loaded")))
    }

    /// Conv2d with bias; `name` is the module prefix (without `.weight`).
    fn conv(&self, x: &Tensor, name: &str, stride: i64, padding: [i64; 2]) -> TResult<Tensor> {
        let weight = self.get(&format!("{name}.weight"))?;
        let bias = self.get(&format!("{name}.bias"))?;
        x.f_conv2d(weight, Some(bias), [stride, stride], padding, [1, 1], 1)
    }

    fn norm(&self, x: &Tensor, name: &str, norm: Norm) -> TResult<Tensor> {
        match norm {
            Norm::Batch => x.f_batch_norm(
                Some(self.get(&format!("{name}.weight"))?),
                Some(self.get(&format!("{name}.bias"))?),
                Some(self.get(&format!("{name}.running_mean"))?),
                Some(self.get(&format!("{name}.running_var"))?),
                false,
                0.1,
                1e-5,
                false,
            ),
            Norm::Instance => x.f_instance_norm(None::<Tensor>, None, None, None, true, 0.1, 1e-5, false),
            Norm::None => Ok(x.shallow_clone()),
        }
    }

    /// torchvision `Conv2dNormActivation`: conv (padding k/2) → norm → optional ReLU.
    fn conv_norm(&self, x: &Tensor, name: &str, k: i64, stride: i64, norm: Norm, relu: bool) -> TResult<Tensor> {
        let y = self.conv(x, &format!("{name}.0"), stride, [k / 2, k / 2])?;
        let y = self.norm(&y, &format!("{name}.1"), norm)?;
        if relu {
            y.f_relu()
        } else {
            Ok(y)
        }
    }

    fn block(&self, x: &Tensor, name: &str, enc: &EncoderSpec, stride: i64) -> TResult<Tensor> {
        let n = enc.norm;
        let y = match enc.block {
            Block::Residual => {
                let y = self.conv_norm(x, &format!("{name}.convnormrelu1"), 3, stride, n, true)?;
                self.conv_norm(&y, &format!("{name}.convnormrelu2"), 3, 1, n, true)?
            }
            Block::Bottleneck => {
                let y = self.conv_norm(x, &format!("{name}.convnormrelu1"), 1, 1, n, true)?;
                let y = self.conv_norm(&y, &format!("{name}.convnormrelu2"), 3, stride, n, true)?;
                self.conv_norm(&y, &format!("{name}.convnormrelu3"), 1, 1, n, true)?
            }
        };
        let skip = if stride == 1 {
            x.shallow_clone()
        } else {
            self.conv_norm(x, &format!("{name}.downsample"), 1, stride, n, false)?
        };
        (skip + y).f_relu()
    }

    fn encoder(&self, x: &Tensor, enc: &EncoderSpec) -> TResult<Tensor> {
        let p = enc.prefix;
        let mut y = self.conv_norm(x, &format!("{p}.convnormrelu"), 7, 2, enc.norm, true)?;
        for (layer, stride) in EncoderSpec::LAYER_STRIDES.iter().enumerate() {
            y = self.block(&y, &format!("{p}.layer{}.0", layer + 1), enc, *stride)?;
            y = self.block(&y, &format!("{p}.layer{}.1", layer + 1), enc, 1)?;
        }
        self.conv(&y, &format!("{p}.conv"), 1, [0, 0])
    }

    /// All-pairs correlation, (B·h·w, 1, h, w) at level 0, then avg-pooled 2×2 (floor) per level. Float32.
    fn pyramid(&self, fmap1: &Tensor, fmap2: &Tensor) -> TResult<Vec<Tensor>> {
        let (b, c, h, w) = fmap1.size4()?;
        let f1 = fmap1.f_to_kind(Kind::Float)?.f_view([b, c, h * w])?;
        let f2 = fmap2.f_to_kind(Kind::Float)?.f_view([b, c, h * w])?;
        let corr = f1.f_transpose(1, 2)?.f_matmul(&f2)?;
        let corr = (corr / (c as f64).sqrt()).f_reshape([b * h * w, 1, h, w])?;
        let mut levels = vec![corr];
        for _ in 1..self.arch.levels {
            let prev = &levels[levels.len() - 1];
            let next = prev.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)?;
            levels.push(next);
        }
        Ok(levels)
    }

    /// Correlation features at `coords` (B, 2, h, w; channel 0 = x): (B, levels·(2r+1)², h, w), x-major within
    /// each level (channel = (Δx+r)·(2r+1) + (Δy+r)).
    fn lookup(&self, pyramid: &[Tensor], coords: &Tensor) -> TResult<Tensor> {
        let (b, _, h, w) = coords.size4()?;
        let r = self.arch.radius;
        let side = 2 * r + 1;
        let device = coords.device();
        let d = Tensor::f_arange_start(-r, r + 1, (Kind::Float, device))?;
        // delta[i, j] = (x offset d[i], y offset d[j]).
        let dx = d.f_view([side, 1])?.f_expand([side, side], false)?;
        let dy = d.f_view([1, side])?.f_expand([side, side], false)?;
        let delta = Tensor::f_stack(&[dx, dy], -1)?.f_view([1, side, side, 2])?;
        let mut centre = coords.f_permute([0, 2, 3, 1])?.f_reshape([b * h * w, 1, 1, 2])?;
        let mut out = Vec::with_capacity(pyramid.len());
        for corr in pyramid {
            let (_, _, hl, wl) = corr.size4()?;
            let pts = (&centre + &delta).f_split_with_sizes([1, 1], -1)?;
            let x = &pts[0] * (2.0 / (wl - 1) as f64) - 1.0;
            let y = if hl > 1 {
                &pts[1] * (2.0 / (hl - 1) as f64) - 1.0
            } else {
                pts[1].shallow_clone()
            };
            let grid = Tensor::f_cat(&[x, y], -1)?;
            let sampled = corr.f_grid_sampler(&grid, 0, 0, true)?;
            out.push(sampled.f_view([b, h, w, side * side])?);
            centre = centre.f_div_scalar(2.0)?;
        }
        Tensor::f_cat(&out, -1)?.f_permute([0, 3, 1, 2])?.f_contiguous()
    }

    fn motion_encoder(&self, flow: &Tensor, corr: &Tensor) -> TResult<Tensor> {
        let me = "update_block.motion_encoder";
        let mut c = self.conv_norm(corr, &format!("{me}.convcorr1"), 1, 1, Norm::None, true)?;
        if self.arch.corr_layers.len() == 2 {
            c = self.conv_norm(&c, &format!("{me}.convcorr2"), 3, 1, Norm::None, true)?;
        }
        let f = self.conv_norm(flow, &format!("{me}.convflow1"), 7, 1, Norm::None, true)?;
        let f = self.conv_norm(&f, &format!("{me}.convflow2"), 3, 1, Norm::None, true)?;
        let cf = Tensor::f_cat(&[c, f], 1)?;
        let cf = self.conv_norm(&cf, &format!("{me}.conv"), 3, 1, Norm::None, true)?;
        Tensor::f_cat(&[cf, flow.shallow_clone()], 1)
    }

    fn gru(&self, h: Tensor, x: &Tensor) -> TResult<Tensor> {
        let mut h = h;
        for (i, (_, padding)) in self.arch.gru.iter().enumerate() {
            let name = format!("update_block.recurrent_block.convgru{}", i + 1);
            let hx = Tensor::f_cat(&[&h, x], 1)?;
            let z = self.conv(&hx, &format!("{name}.convz"), 1, *padding)?.f_sigmoid()?;
            let r = self.conv(&hx, &format!("{name}.convr"), 1, *padding)?.f_sigmoid()?;
            let rhx = Tensor::f_cat(&[&(&r * &h), x], 1)?;
            let q = self.conv(&rhx, &format!("{name}.convq"), 1, *padding)?.f_tanh()?;
            h = (z.f_neg()? + 1.0) * &h + z * q;
        }
        Ok(h)
    }

    fn flow_head(&self, h: &Tensor) -> TResult<Tensor> {
        let y = self.conv(h, "update_block.flow_head.conv1", 1, [1, 1])?.f_relu()?;
        self.conv(&y, "update_block.flow_head.conv2", 1, [1, 1])
    }

    /// Flow at 1/8 resolution → full resolution, ×8 in value.
    fn upsample(&self, flow: &Tensor, hidden: &Tensor) -> TResult<Tensor> {
        let (b, c, h, w) = flow.size4()?;
        if !self.arch.mask_predictor {
            return Ok(flow.f_upsample_bilinear2d([8 * h, 8 * w], true, None, None)? * 8.0);
        }
        let m = self.conv_norm(hidden, "mask_predictor.convrelu", 3, 1, Norm::None, true)?;
        let m = self.conv(&m, "mask_predictor.conv", 1, [0, 0])? * 0.25;
        let m = m.f_view(&[b, 1, 9, 8, 8, h, w][..])?.f_softmax(2, m.kind())?;
        let neighbours = (flow * 8.0)
            .f_im2col([3, 3], [1, 1], [1, 1], [1, 1])?
            .f_view(&[b, c, 9, 1, 1, h, w][..])?;
        let fine = (m * neighbours).f_sum_dim_intlist(2, false, None::<Kind>)?;
        fine.f_permute([0, 1, 4, 2, 5, 3])?.f_reshape([b, c, 8 * h, 8 * w])
    }

    /// Flow (B, 2, H, W) for normalised inputs whose H and W are multiples of 8 and at least 128.
    pub fn forward(&self, image1: &Tensor, image2: &Tensor, iterations: usize) -> TResult<Tensor> {
        let (b, _, ih, iw) = image1.size4()?;
        let (h, w) = (ih / 8, iw / 8);
        let fmaps = self.encoder(&Tensor::f_cat(&[image1, image2], 0)?, &self.arch.feature)?;
        let fmaps = fmaps.f_chunk(2, 0)?;
        let pyramid = self.pyramid(&fmaps[0], &fmaps[1])?;
        let ctx = self.encoder(image1, &self.arch.context)?;
        let split = ctx.f_split_with_sizes([self.arch.hidden, self.arch.context_dim()], 1)?;
        let mut hidden = split[0].f_tanh()?;
        let context = split[1].f_relu()?;

        let device = image1.device();
        let xs = Tensor::f_arange(w, (Kind::Float, device))?
            .f_view([1, 1, 1, w])?
            .f_expand([b, 1, h, w], false)?;
        let ys = Tensor::f_arange(h, (Kind::Float, device))?
            .f_view([1, 1, h, 1])?
            .f_expand([b, 1, h, w], false)?;
        let coords0 = Tensor::f_cat(&[xs, ys], 1)?;
        // Updated out of place: coords1 starts as an alias of coords0.
        let mut coords1 = coords0.shallow_clone();
        let kind = image1.kind();
        for _ in 0..iterations {
            let corr = self.lookup(&pyramid, &coords1)?.f_to_kind(kind)?;
            let flow = (&coords1 - &coords0).f_to_kind(kind)?;
            let motion = self.motion_encoder(&flow, &corr)?;
            let x = Tensor::f_cat(&[&context, &motion], 1)?;
            hidden = self.gru(hidden, &x)?;
            let delta = self.flow_head(&hidden)?;
            coords1 = coords1.f_add(&delta.f_to_kind(Kind::Float)?)?;
        }
        let flow = (&coords1 - &coords0).f_to_kind(kind)?;
        self.upsample(&flow, &hidden)?.f_to_kind(Kind::Float)
    }
}
