//! Batch normalisation over the channel axis (Keras `BatchNormalization`,
//! PyTorch `nn.BatchNorm2d` / `BatchNorm1d`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::kernels;
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Batch normalisation of axis 1 of an `(N, C)` or `(N, C, H, W)` tensor.
///
/// In evaluation mode it uses the running statistics. In training mode it
/// normalises with the batch statistics (biased variance) and updates the
/// running statistics with PyTorch's convention,
/// `running = (1 - momentum) * running + momentum * batch` with the unbiased batch
/// variance. Keras' `momentum=0.99` is PyTorch's `momentum=0.01`.
///
/// Training on the CPU in f32 runs one kernel with its own backward
/// ([`kernels::batch_norm_train`]); elsewhere (and on [`kernels::KernelPath::Candle`])
/// it composes candle ops, which candle's autograd differentiates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Added to the variance (PyTorch 1e-5, Keras 1e-3).
    pub eps: f64,
    /// Weight of the new batch in the running statistics (PyTorch convention).
    pub momentum: f64,
    /// Whether there is a learned scale (`weight`) and shift (`bias`).
    pub affine: bool,
    /// Channels, resolved when first applied.
    #[serde(default)]
    pub channels: usize,
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchNorm {
    /// PyTorch defaults: eps 1e-5, momentum 0.1, affine.
    pub fn new() -> Self {
        BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
            channels: 0,
        }
    }
    /// Keras defaults: eps 1e-3, momentum 0.99 (0.01 in PyTorch's convention).
    pub fn keras() -> Self {
        BatchNorm {
            eps: 1e-3,
            momentum: 0.01,
            affine: true,
            channels: 0,
        }
    }
    /// Sets epsilon.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets momentum (PyTorch convention).
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
}

impl BatchNorm {
    /// PyTorch's running-statistics update from the batch mean and biased
    /// variance of `x` (made unbiased here), computed in f64.
    fn update_running_stats(
        &self,
        ctx: &ForwardCtx,
        x: &Tensor,
        mean: &[f64],
        var: &[f64],
    ) -> Result<()> {
        let node = ctx.node;
        let n = x.elem_count() / self.channels.max(1);
        let unbiased = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let m = self.momentum;
        for (name, batch, factor) in [("running_mean", mean, 1.0), ("running_var", var, unbiased)] {
            let old = ctx.param(name)?;
            let old_v: Vec<f32> = old
                .detach()
                .to_dtype(candle_core::DType::F32)
                .at_node(node)?
                .to_vec1()
                .at_node(node)?;
            if old_v.len() != batch.len() {
                return Err(Error::shape(
                    node,
                    format!(
                        "{name} has {} values for {} channels",
                        old_v.len(),
                        batch.len()
                    ),
                ));
            }
            let new: Vec<f32> = old_v
                .iter()
                .zip(batch)
                .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b * factor) as f32)
                .collect();
            let new = Tensor::from_vec(new, old_v.len(), old.device())
                .and_then(|t| t.to_dtype(old.dtype()))
                .at_node(node)?;
            ctx.set_buffer(name, &new)?;
        }
        Ok(())
    }
}

impl LayerOp for BatchNorm {
    fn base_name(&self) -> &'static str {
        "batch_normalization"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        if s.rank() != 1 && s.rank() != 3 {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "batch norm expects (N, C) or (N, C, H, W), got '{}' with shape {s}",
                    ctx.input_names[0]
                ),
            ));
        }
        let c = s.dims()[0];
        if self.channels != 0 && self.channels != c {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "this batch norm has {} channels but input '{}' has {c} (shape {s})",
                    self.channels, ctx.input_names[0]
                ),
            ));
        }
        if self.eps.is_nan() || self.eps <= 0.0 || !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::invalid(
                ctx.node,
                "eps must be > 0 and momentum in [0, 1]",
            ));
        }
        self.channels = c;
        Ok(s.clone())
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let c = vec![self.channels];
        let mut v = Vec::new();
        if self.affine {
            v.push(ParamSpec {
                name: "weight".into(),
                shape: c.clone(),
                kind: ParamKind::Trainable,
                init: Init::Ones,
            });
            v.push(ParamSpec {
                name: "bias".into(),
                shape: c.clone(),
                kind: ParamKind::Trainable,
                init: Init::Zeros,
            });
        }
        v.push(ParamSpec {
            name: "running_mean".into(),
            shape: c.clone(),
            kind: ParamKind::Buffer,
            init: Init::Zeros,
        });
        v.push(ParamSpec {
            name: "running_var".into(),
            shape: c,
            kind: ParamKind::Buffer,
            init: Init::Ones,
        });
        v
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let node = ctx.node;
        let x = &inputs[0];
        let rank = x.rank();
        let mut bshape = vec![1usize; rank];
        bshape[1] = self.channels;
        let reduce: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
        if ctx.train {
            let affine = if self.affine {
                Some((ctx.param("weight")?, ctx.param("bias")?))
            } else {
                None
            };
            let wb = affine.as_ref().map(|(w, b)| (w, b));
            if let Some(r) = kernels::batch_norm_train(x, wb, self.eps, false) {
                let (y, stats) = r.at_node(node)?;
                self.update_running_stats(ctx, x, &stats.mean, &stats.var)?;
                return Ok(y);
            }
        }
        let (mean, var) = if ctx.train {
            let n = x.elem_count() / self.channels;
            let mean = x.mean_keepdim(reduce.as_slice()).at_node(node)?;
            let centered = x.broadcast_sub(&mean).at_node(node)?;
            let var = centered
                .sqr()
                .at_node(node)?
                .mean_keepdim(reduce.as_slice())
                .at_node(node)?;
            // Running statistics are state, not part of the differentiated graph.
            let m = self.momentum;
            let rm = ctx.param("running_mean")?;
            let rv = ctx.param("running_var")?;
            let bm = mean.detach().flatten_all().at_node(node)?;
            let unbiased = if n > 1 {
                n as f64 / (n as f64 - 1.0)
            } else {
                1.0
            };
            let bv = (var.detach().flatten_all().at_node(node)? * unbiased).at_node(node)?;
            let new_rm = ((rm.detach() * (1.0 - m)).at_node(node)? + (bm * m).at_node(node)?)
                .at_node(node)?;
            let new_rv = ((rv.detach() * (1.0 - m)).at_node(node)? + (bv * m).at_node(node)?)
                .at_node(node)?;
            ctx.set_buffer("running_mean", &new_rm)?;
            ctx.set_buffer("running_var", &new_rv)?;
            (mean, var)
        } else {
            (
                ctx.param("running_mean")?
                    .reshape(bshape.as_slice())
                    .at_node(node)?,
                ctx.param("running_var")?
                    .reshape(bshape.as_slice())
                    .at_node(node)?,
            )
        };
        let inv_std = (var + self.eps)
            .at_node(node)?
            .sqrt()
            .at_node(node)?
            .recip()
            .at_node(node)?;
        let mut y = x
            .broadcast_sub(&mean)
            .at_node(node)?
            .broadcast_mul(&inv_std)
            .at_node(node)?;
        if self.affine {
            let w = ctx
                .param("weight")?
                .reshape(bshape.as_slice())
                .at_node(node)?;
            let b = ctx
                .param("bias")?
                .reshape(bshape.as_slice())
                .at_node(node)?;
            y = y
                .broadcast_mul(&w)
                .at_node(node)?
                .broadcast_add(&b)
                .at_node(node)?;
        }
        Ok(y)
    }
}
