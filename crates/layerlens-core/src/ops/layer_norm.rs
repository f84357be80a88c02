//! Layer normalisation (Keras `LayerNormalization`, PyTorch `nn.LayerNorm`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Normalises each sample over `axes` (axes of the batched tensor, so 1 is the
/// channel axis of an NCHW map, Keras' `axis=-1` on NHWC), then scales by
/// `weight` and shifts by `bias`, both shaped like the normalised axes.
///
/// ```
/// use layerlens_core::ops::LayerNorm;
/// let ln = LayerNorm::new(vec![1]).eps(1e-6);
/// assert_eq!(ln.axes, [1]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerNorm {
    /// Normalised axes of the batched tensor, ascending (never 0, the batch).
    pub axes: Vec<usize>,
    /// Added to the variance.
    pub eps: f64,
    /// Whether `weight` (Keras' `gamma`) multiplies the result.
    pub scale: bool,
    /// Whether `bias` (Keras' `beta`) is added.
    pub center: bool,
    /// Sizes of the normalised axes, resolved when first applied.
    #[serde(default)]
    pub param_shape: Vec<usize>,
}

impl LayerNorm {
    /// Normalisation over `axes` with epsilon 1e-5, scale and centre.
    pub fn new(axes: Vec<usize>) -> Self {
        LayerNorm {
            axes,
            eps: 1e-5,
            scale: true,
            center: true,
            param_shape: Vec::new(),
        }
    }
    /// Sets epsilon.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
}

impl LayerOp for LayerNorm {
    fn base_name(&self) -> &'static str {
        "layer_normalization"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        let rank = s.rank() + 1;
        let mut sorted = self.axes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty()
            || sorted.len() != self.axes.len()
            || sorted[0] == 0
            || sorted[sorted.len() - 1] >= rank
        {
            return Err(Error::invalid(
                ctx.node,
                format!(
                    "layer norm axes {:?} must be distinct axes 1..{} of input '{}' {s}",
                    self.axes,
                    rank - 1,
                    ctx.input_names[0]
                ),
            ));
        }
        self.axes = sorted;
        let shape: Vec<usize> = self.axes.iter().map(|&a| s.dims()[a - 1]).collect();
        if !self.param_shape.is_empty() && self.param_shape != shape {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "this layer norm was built for axes of sizes {:?}, but '{}' has {:?}",
                    self.param_shape, ctx.input_names[0], shape
                ),
            ));
        }
        self.param_shape = shape;
        Ok(s.clone())
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        if self.scale {
            v.push(ParamSpec {
                name: "weight".into(),
                shape: self.param_shape.clone(),
                kind: ParamKind::Trainable,
                init: Init::Ones,
            });
        }
        if self.center {
            v.push(ParamSpec {
                name: "bias".into(),
                shape: self.param_shape.clone(),
                kind: ParamKind::Trainable,
                init: Init::Zeros,
            });
        }
        v
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let node = ctx.node;
        let x = &inputs[0];
        let dtype = x.dtype();
        // Statistics in f32 at least, as Keras computes them.
        let xf = if dtype == DType::F64 {
            x.clone()
        } else {
            x.to_dtype(DType::F32).at_node(node)?
        };
        let mut mean = xf.clone();
        for &a in self.axes.iter().rev() {
            mean = mean.mean_keepdim(a).at_node(node)?;
        }
        let centred = xf.broadcast_sub(&mean).at_node(node)?;
        let mut var = centred.sqr().at_node(node)?;
        for &a in self.axes.iter().rev() {
            var = var.mean_keepdim(a).at_node(node)?;
        }
        let inv = (var + self.eps)
            .and_then(|v| v.sqrt())
            .and_then(|v| v.recip())
            .at_node(node)?;
        let mut y = centred.broadcast_mul(&inv).at_node(node)?;
        // Parameters broadcast as the normalised axes with 1 elsewhere.
        let bshape: Vec<usize> = (0..x.rank())
            .map(|i| match self.axes.iter().position(|&a| a == i) {
                Some(k) => self.param_shape[k],
                None => 1,
            })
            .collect();
        if self.scale {
            let w = ctx
                .param("weight")?
                .reshape(bshape.as_slice())
                .at_node(node)?;
            y = y
                .broadcast_mul(&w.to_dtype(y.dtype()).at_node(node)?)
                .at_node(node)?;
        }
        if self.center {
            let b = ctx
                .param("bias")?
                .reshape(bshape.as_slice())
                .at_node(node)?;
            y = y
                .broadcast_add(&b.to_dtype(y.dtype()).at_node(node)?)
                .at_node(node)?;
        }
        y.to_dtype(dtype).at_node(node)
    }

    fn macs(&self, inputs: &[Shape], _output: &Shape) -> u64 {
        inputs.first().map_or(0, |s| 4 * s.elem_count() as u64)
    }
}
