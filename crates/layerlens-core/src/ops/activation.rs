//! Element-wise activations, usable as their own node or fused into a
//! convolution or dense layer (Keras' `activation=` argument).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::{resolve_axis, Shape};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// An activation function.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet, EfficientNet-Lite).
    Relu6,
    /// `max(x, slope * x)`.
    LeakyRelu {
        /// Slope for negative inputs.
        slope: f32,
    },
    /// Hyperbolic tangent, range (-1, 1).
    Tanh,
    /// Logistic sigmoid, range (0, 1).
    Sigmoid,
    /// `relu6(x + 3) / 6` (PyTorch's definition).
    HardSigmoid,
    /// `x * relu6(x + 3) / 6` (MobileNetV3, PyTorch's definition).
    HardSwish,
    /// `clamp(x, min, max)` (ONNX `Clip`).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `clamp(alpha * x + beta, 0, 1)` (ONNX `HardSigmoid`; its default alpha is 0.2).
    HardSigmoidAb {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// Softmax over a full-tensor axis (1 = channels/features, Keras' default in NHWC terms).
    Softmax {
        /// Axis of the batched tensor; negative counts from the end.
        axis: isize,
    },
}

impl Activation {
    /// Softmax over the channel/feature axis.
    pub const SOFTMAX: Activation = Activation::Softmax { axis: 1 };

    /// The same activation as a convolution epilogue, where it has one.
    pub fn fusable(&self) -> Option<crate::kernels::conv::FusedActivation> {
        use crate::kernels::conv::FusedActivation as F;
        match *self {
            Activation::Relu => Some(F::Relu),
            Activation::Relu6 => Some(F::Clip(0.0, 6.0)),
            Activation::Clip { min, max } => Some(F::Clip(min, max)),
            _ => None,
        }
    }

    /// Applies the function.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match *self {
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
            Activation::LeakyRelu { slope } => candle_nn::ops::leaky_relu(x, slope as f64),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
            Activation::HardSigmoid => (x + 3.0)?.clamp(0f32, 6f32)? / 6.0,
            Activation::HardSwish => x.mul(&((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?),
            Activation::Clip { min, max } => x.clamp(min, max),
            Activation::HardSigmoidAb { alpha, beta } => {
                ((x * alpha as f64)? + beta as f64)?.clamp(0f32, 1f32)
            }
            Activation::Softmax { axis } => {
                let a = resolve_axis(axis, x.rank()).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "softmax axis {axis} out of range for rank {}",
                        x.rank()
                    ))
                })?;
                candle_nn::ops::softmax(x, a)
            }
        }
    }

    /// The output range a visualisation can assume, if bounded below or above.
    pub fn range(&self) -> (Option<f32>, Option<f32>) {
        match self {
            Activation::Relu => (Some(0.0), None),
            Activation::Relu6 => (Some(0.0), Some(6.0)),
            Activation::Tanh => (Some(-1.0), Some(1.0)),
            Activation::Sigmoid
            | Activation::HardSigmoid
            | Activation::HardSigmoidAb { .. }
            | Activation::Softmax { .. } => (Some(0.0), Some(1.0)),
            Activation::Clip { min, max } => (Some(*min), Some(*max)),
            Activation::LeakyRelu { .. } | Activation::HardSwish => (None, None),
        }
    }
}

impl LayerOp for Activation {
    fn base_name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::HardSwish => "hard_swish",
            Activation::Softmax { .. } => "softmax",
            Activation::Clip { .. } => "clip",
            Activation::HardSigmoidAb { .. } => "hard_sigmoid",
        }
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = ctx.input_shapes[0].clone();
        if let Activation::Softmax { axis } = *self {
            if resolve_axis(axis, s.rank() + 1).is_none_or(|a| a == 0) {
                return Err(Error::invalid(
                    ctx.node,
                    format!(
                        "softmax axis {axis} is the batch axis or out of range for input shape {s}"
                    ),
                ));
            }
        }
        Ok(s)
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        self.apply(&inputs[0]).at_node(ctx.node)
    }
}
