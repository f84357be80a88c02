//! Fully connected layer (Keras `Dense`, PyTorch `nn.Linear`).

use super::{Activation, ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `y = x W^T + b` over the last axis, with `W` stored `[units, in_features]`
/// like PyTorch (Keras stores the transpose, `[in, units]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Output features.
    pub units: usize,
    /// Whether a bias is added.
    pub bias: bool,
    /// Activation applied after the bias (Keras' `activation=`).
    pub activation: Option<Activation>,
    /// Input features, resolved when first applied.
    #[serde(default)]
    pub in_features: usize,
    /// Accept inputs of any rank, multiplying along their last axis (ONNX
    /// `MatMul` on `(N, H, W, C)`, PyTorch `nn.Linear` on a channels-last map).
    /// Off by default: a builder's Dense on an NCHW map would act on the width,
    /// which is almost never meant, and is refused.
    #[serde(default)]
    pub any_rank: bool,
}

impl Dense {
    /// A dense layer with `units` outputs and a bias.
    pub fn new(units: usize) -> Self {
        Dense {
            units,
            bias: true,
            activation: None,
            in_features: 0,
            any_rank: false,
        }
    }
    /// Multiplies along the last axis of inputs of any rank ([`Dense::any_rank`]).
    pub fn on_last_axis(mut self) -> Self {
        self.any_rank = true;
        self
    }
    /// Sets the fused activation.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = Some(a);
        self
    }
    /// Enables or disables the bias.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

impl LayerOp for Dense {
    fn base_name(&self) -> &'static str {
        "dense"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        if s.rank() == 0 {
            return Err(Error::shape(
                ctx.node,
                "dense needs an input with a feature axis",
            ));
        }
        if self.units == 0 {
            return Err(Error::invalid(ctx.node, "units must be at least 1"));
        }
        let f = *s.dims().last().expect("rank >= 1");
        if self.in_features != 0 && self.in_features != f {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "this dense layer's kernel expects {} input features, but input '{}' has {} (shape {})",
                    self.in_features, ctx.input_names[0], f, s
                ),
            ));
        }
        if s.rank() > 1 && !self.any_rank {
            // Keras applies Dense to the last axis of an image tensor without complaint; in
            // NCHW that axis is the width, which is almost never what was meant.
            return Err(Error::shape(
                ctx.node,
                format!(
                    "dense expects (N, features) but input '{}' has shape {s}; add a Flatten or GlobalAvgPool before it",
                    ctx.input_names[0]
                ),
            ));
        }
        self.in_features = f;
        let mut out = s.dims().to_vec();
        *out.last_mut().expect("rank >= 1") = self.units;
        Ok(Shape::new(out))
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = vec![ParamSpec {
            name: "weight".into(),
            shape: vec![self.units, self.in_features],
            kind: ParamKind::Trainable,
            init: Init::GlorotUniform {
                fan_in: self.in_features,
                fan_out: self.units,
            },
        }];
        if self.bias {
            v.push(ParamSpec {
                name: "bias".into(),
                shape: vec![self.units],
                kind: ParamKind::Trainable,
                init: Init::Zeros,
            });
        }
        v
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let w = ctx.param("weight")?;
        let wt = w.t().at_node(ctx.node)?;
        let mut y = if inputs[0].rank() > 2 {
            inputs[0].broadcast_matmul(&wt).at_node(ctx.node)?
        } else {
            inputs[0].matmul(&wt).at_node(ctx.node)?
        };
        if self.bias {
            y = y.broadcast_add(&ctx.param("bias")?).at_node(ctx.node)?;
        }
        match &self.activation {
            Some(a) => a.apply(&y).at_node(ctx.node),
            None => Ok(y),
        }
    }

    fn macs(&self, _inputs: &[Shape], output: &Shape) -> u64 {
        (self.in_features * output.elem_count()) as u64
    }
}
