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
}

impl Dense {
    /// A dense layer with `units` outputs and a bias.
    pub fn new(units: usize) -> Self {
        Dense {
            units,
            bias: true,
            activation: None,
            in_features: 0,
        }
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
        if s.rank() > 1 {
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
        Ok(Shape::new([self.units]))
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
        let mut y = inputs[0]
            .matmul(&w.t().at_node(ctx.node)?)
            .at_node(ctx.node)?;
        if self.bias {
            y = y.broadcast_add(&ctx.param("bias")?).at_node(ctx.node)?;
        }
        match &self.activation {
            Some(a) => a.apply(&y).at_node(ctx.node),
            None => Ok(y),
        }
    }

    fn macs(&self, _inputs: &[Shape], _output: &Shape) -> u64 {
        (self.in_features * self.units) as u64
    }
}
