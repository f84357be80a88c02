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
    /// `x` for `x > 0`, else `alpha * (exp(x) - 1)` (Keras `elu`).
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// `1.0507 * elu(x, 1.6733)` (Keras `selu`).
    Selu,
    /// `0.5 x (1 + erf(x / sqrt 2))`, the exact GELU (Keras `gelu`, `approximate=False`).
    Gelu,
    /// The tanh approximation of GELU (Keras `gelu` with `approximate=True`).
    GeluTanh,
    /// `x * sigmoid(x)` (Keras `silu` / `swish`).
    Silu,
    /// `log(1 + exp(x))`, computed without overflow.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `exp(x)`.
    Exponential,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// Keras' `ReLU` layer in full: `max_value` at and above `max_value`, `x`
    /// from `threshold` up, `negative_slope * (x - threshold)` below it.
    ReluGeneral {
        /// Upper saturation value (`None`: unbounded).
        max_value: Option<f32>,
        /// Slope below the threshold.
        negative_slope: f32,
        /// Where the identity part starts.
        threshold: f32,
    },
    /// `log(softmax(x))` over a full-tensor axis (Keras `log_softmax`).
    LogSoftmax {
        /// Axis of the batched tensor; negative counts from the end.
        axis: isize,
    },
    /// `x - tanh(x)` (Keras `tanh_shrink`).
    TanhShrink,
    /// `log(sigmoid(x))`, computed without overflow (Keras `log_sigmoid`).
    LogSigmoid,
    /// `max(0, x) + min(0, alpha * (exp(x / alpha) - 1))` (Keras `celu`).
    Celu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// `(x + sqrt(x^2 + b)) / 2` (Keras `squareplus`).
    Squareplus {
        /// Smoothness.
        b: f32,
    },
    /// `x - t` above `t`, `x + t` below `-t`, 0 between (Keras `soft_shrink`).
    SoftShrink {
        /// Threshold.
        threshold: f32,
    },
    /// `x` where `|x| > t`, else 0 (Keras `hard_shrink`).
    HardShrink {
        /// Threshold.
        threshold: f32,
    },
    /// `|x|` (ONNX `Abs`).
    Abs,
    /// `-x` (ONNX `Neg`).
    Neg,
    /// `sqrt(x)`, NaN below 0 (ONNX `Sqrt`).
    Sqrt,
    /// `1 / x` (ONNX `Reciprocal`).
    Reciprocal,
    /// The error function (ONNX `Erf`; exported GELUs before opset 20).
    Erf,
    /// Natural logarithm, NaN below 0 (ONNX `Log`).
    Log,
    /// `x ^ exponent` for a constant exponent (ONNX `Pow` with a scalar
    /// constant exponent).
    Pow {
        /// The exponent.
        exponent: f32,
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
            Activation::Softmax { axis } => candle_nn::ops::softmax(x, softmax_axis(axis, x)?),
            Activation::LogSoftmax { axis } => {
                candle_nn::ops::log_softmax(x, softmax_axis(axis, x)?)
            }
            Activation::Elu { alpha } => x.elu(alpha as f64),
            Activation::Selu => x.elu(SELU_ALPHA)? * SELU_SCALE,
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
            Activation::Softplus => softplus(x),
            Activation::Softsign => x.broadcast_div(&(x.abs()? + 1.0)?),
            Activation::Exponential => x.exp(),
            Activation::Mish => x.mul(&softplus(x)?.tanh()?),
            Activation::Abs => x.abs(),
            Activation::Neg => x.neg(),
            Activation::Sqrt => x.sqrt(),
            Activation::Reciprocal => x.recip(),
            Activation::Erf => x.erf(),
            Activation::Log => x.log(),
            Activation::Pow { exponent } => match exponent {
                1.0 => Ok(x.clone()),
                2.0 => x.sqr(),
                e => x.powf(e as f64),
            },
            Activation::ReluGeneral {
                max_value,
                negative_slope,
                threshold,
            } => {
                let zero = x.zeros_like()?;
                let below = ((x - threshold as f64)? * negative_slope as f64)?;
                let y = x.ge(threshold)?.where_cond(x, &below)?;
                let y = if negative_slope == 0.0 {
                    // Keras' threshold ReLU gives exact zeros below the threshold.
                    x.ge(threshold)?.where_cond(&y, &zero)?
                } else {
                    y
                };
                match max_value {
                    Some(m) => y.minimum(m),
                    None => Ok(y),
                }
            }
            Activation::TanhShrink => x - x.tanh()?,
            // log(sigmoid(x)) = -softplus(-x).
            Activation::LogSigmoid => softplus(&x.neg()?)?.neg(),
            Activation::Celu { alpha } => {
                let a = alpha as f64;
                let neg = (((x / a)?.exp()? - 1.0)? * a)?.minimum(0f32)?;
                x.relu()? + neg
            }
            Activation::Squareplus { b } => (x + (x.sqr()? + b as f64)?.sqrt()?)? / 2.0,
            Activation::SoftShrink { threshold } => {
                let t = threshold as f64;
                let zero = x.zeros_like()?;
                let hi = x.gt(threshold)?.where_cond(&(x - t)?, &zero)?;
                x.lt(-threshold)?.where_cond(&(x + t)?, &hi)
            }
            Activation::HardShrink { threshold } => {
                let zero = x.zeros_like()?;
                x.abs()?.gt(threshold)?.where_cond(x, &zero)
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
            Activation::Elu { alpha } | Activation::Celu { alpha } => (Some(-alpha.abs()), None),
            Activation::Selu => (Some(-(SELU_SCALE * SELU_ALPHA) as f32), None),
            Activation::Softplus | Activation::Exponential | Activation::Squareplus { .. } => {
                (Some(0.0), None)
            }
            Activation::Softsign | Activation::Erf => (Some(-1.0), Some(1.0)),
            Activation::Abs | Activation::Sqrt => (Some(0.0), None),
            Activation::LogSoftmax { .. } | Activation::LogSigmoid => (None, Some(0.0)),
            Activation::ReluGeneral {
                max_value,
                negative_slope,
                ..
            } => (
                if *negative_slope == 0.0 {
                    Some(0.0)
                } else {
                    None
                },
                *max_value,
            ),
            Activation::LeakyRelu { .. }
            | Activation::HardSwish
            | Activation::Gelu
            | Activation::GeluTanh
            | Activation::Silu
            | Activation::Mish
            | Activation::TanhShrink
            | Activation::SoftShrink { .. }
            | Activation::HardShrink { .. }
            | Activation::Neg
            | Activation::Reciprocal
            | Activation::Log
            | Activation::Pow { .. } => (None, None),
        }
    }
}

/// SELU's constants (Klambauer et al., as in Keras and PyTorch).
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

fn softmax_axis(axis: isize, x: &Tensor) -> candle_core::Result<usize> {
    resolve_axis(axis, x.rank()).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "softmax axis {axis} out of range for rank {}",
            x.rank()
        ))
    })
}

/// `log(1 + exp(x))` as `max(x, 0) + log(1 + exp(-|x|))`, which never overflows.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
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
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Gelu | Activation::GeluTanh => "gelu",
            Activation::Silu => "silu",
            Activation::Softplus => "softplus",
            Activation::Softsign => "softsign",
            Activation::Exponential => "exponential",
            Activation::Mish => "mish",
            Activation::ReluGeneral { .. } => "re_lu",
            Activation::LogSoftmax { .. } => "log_softmax",
            Activation::TanhShrink => "tanh_shrink",
            Activation::LogSigmoid => "log_sigmoid",
            Activation::Celu { .. } => "celu",
            Activation::Squareplus { .. } => "squareplus",
            Activation::SoftShrink { .. } => "soft_shrink",
            Activation::HardShrink { .. } => "hard_shrink",
            Activation::Abs => "abs",
            Activation::Neg => "neg",
            Activation::Sqrt => "sqrt",
            Activation::Reciprocal => "reciprocal",
            Activation::Erf => "erf",
            Activation::Log => "log",
            Activation::Pow { .. } => "pow",
        }
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = ctx.input_shapes[0].clone();
        if let Activation::Softmax { axis } | Activation::LogSoftmax { axis } = *self {
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
