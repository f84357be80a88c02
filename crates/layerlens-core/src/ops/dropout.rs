//! Dropout: identity in evaluation mode.

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Zeroes each value with probability `rate` in training mode and scales the rest
/// by `1 / (1 - rate)`; identity in evaluation mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub rate: f32,
}

impl Dropout {
    /// Dropout with the given rate.
    pub fn new(rate: f32) -> Self {
        Dropout { rate }
    }
}

impl LayerOp for Dropout {
    fn base_name(&self) -> &'static str {
        "dropout"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        if !(0.0..1.0).contains(&self.rate) {
            return Err(Error::invalid(
                ctx.node,
                format!("dropout rate must be in [0, 1), got {}", self.rate),
            ));
        }
        Ok(ctx.input_shapes[0].clone())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        if ctx.train && self.rate > 0.0 {
            candle_nn::ops::dropout(&inputs[0], self.rate).at_node(ctx.node)
        } else {
            Ok(inputs[0].clone())
        }
    }
}
