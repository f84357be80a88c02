//! Flatten and Reshape.

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `(N, ...) -> (N, prod(...))` in NCHW (channel-major) order. Keras flattens
/// NHWC, i.e. channel-minor: see `docs/layout.md` for converting the Dense kernel
/// that follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Flatten;

impl LayerOp for Flatten {
    fn base_name(&self) -> &'static str {
        "flatten"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        Ok(Shape::new([ctx.input_shapes[0].elem_count()]))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        inputs[0].flatten_from(1).at_node(ctx.node)
    }
}

/// Reshapes each sample to `target` (the batch axis is kept, as in Keras'
/// `Reshape`); one entry may be `-1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshape {
    /// Per-sample target shape; one `-1` is inferred.
    pub target: Vec<isize>,
}

impl Reshape {
    /// Reshape each sample to `target`.
    pub fn new(target: impl Into<Vec<isize>>) -> Self {
        Reshape {
            target: target.into(),
        }
    }

    /// Resolves `-1` against a per-sample input shape.
    pub fn resolve(node: &str, target: &[isize], input: &Shape) -> Result<Shape> {
        let n = input.elem_count();
        let mut known = 1usize;
        let mut infer_at = None;
        for (i, &d) in target.iter().enumerate() {
            match d {
                -1 if infer_at.is_none() => infer_at = Some(i),
                -1 => {
                    return Err(Error::invalid(
                        node,
                        "reshape target may contain at most one -1",
                    ))
                }
                d if d <= 0 => {
                    return Err(Error::invalid(
                        node,
                        format!("reshape target {target:?} has a non-positive size"),
                    ))
                }
                d => {
                    known = known.checked_mul(d as usize).ok_or_else(|| {
                        Error::invalid(node, format!("reshape target {target:?} overflows"))
                    })?
                }
            }
        }
        let mut out: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
        match infer_at {
            Some(i) if known > 0 && n.is_multiple_of(known) => out[i] = n / known,
            None if known == n => {}
            _ => {
                return Err(Error::shape(
                    node,
                    format!("cannot reshape {input} ({n} values per sample) to {target:?}"),
                ))
            }
        }
        Ok(Shape::new(out))
    }
}

impl LayerOp for Reshape {
    fn base_name(&self) -> &'static str {
        "reshape"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        Reshape::resolve(ctx.node, &self.target, &ctx.input_shapes[0])
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let per = Reshape::resolve(ctx.node, &self.target, &Shape::from_tensor_dims(x.dims()))?;
        x.reshape(per.with_batch(x.dim(0).at_node(ctx.node)?))
            .at_node(ctx.node)
    }
}
