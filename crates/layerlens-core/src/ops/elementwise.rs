//! Merging layers: Add, Mul (Keras `Add`, `Multiply`) and Concat (`Concatenate`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::{resolve_axis, Shape};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

fn same_shapes(ctx: &InferCtx, what: &str) -> Result<Shape> {
    if ctx.input_shapes.len() < 2 {
        return Err(Error::invalid(
            ctx.node,
            format!("{what} needs at least two inputs"),
        ));
    }
    let first = &ctx.input_shapes[0];
    for (name, s) in ctx.input_names.iter().zip(ctx.input_shapes).skip(1) {
        if s != first {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "cannot {what} '{}' {first} and '{name}' {s}: shapes must be equal",
                    ctx.input_names[0]
                ),
            ));
        }
    }
    Ok(first.clone())
}

/// Element-wise sum of equally shaped inputs (a residual connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Add;

impl LayerOp for Add {
    fn base_name(&self) -> &'static str {
        "add"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        same_shapes(ctx, "add")
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let mut y = inputs[0].clone();
        for x in &inputs[1..] {
            y = (y + x).at_node(ctx.node)?;
        }
        Ok(y)
    }
}

/// Element-wise product of equally shaped inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Mul;

impl LayerOp for Mul {
    fn base_name(&self) -> &'static str {
        "multiply"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        same_shapes(ctx, "multiply")
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let mut y = inputs[0].clone();
        for x in &inputs[1..] {
            y = (y * x).at_node(ctx.node)?;
        }
        Ok(y)
    }
}

/// Concatenation along a full-tensor axis (default 1: channels in NCHW, which is
/// Keras' default `axis=-1` in NHWC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concat {
    /// Axis of the batched tensor; negative counts from the end.
    pub axis: isize,
}

impl Default for Concat {
    fn default() -> Self {
        Concat { axis: 1 }
    }
}

impl Concat {
    /// Concatenation along `axis`.
    pub fn new(axis: isize) -> Self {
        Concat { axis }
    }

    /// Output shape of concatenating `shapes` (named `names`) along a full-tensor axis.
    pub fn infer_shapes(
        node: &str,
        axis: isize,
        names: &[String],
        shapes: &[Shape],
    ) -> Result<Shape> {
        if shapes.is_empty() {
            return Err(Error::invalid(node, "concatenate needs at least one input"));
        }
        let rank = shapes[0].rank();
        let a = match resolve_axis(axis, rank + 1) {
            Some(0) | None => {
                return Err(Error::invalid(
                    node,
                    format!(
                    "cannot concatenate along axis {axis} of {} (the batch axis or out of range)",
                    shapes[0]
                ),
                ))
            }
            Some(a) => a - 1,
        };
        let mut out = shapes[0].dims().to_vec();
        for (name, s) in names.iter().zip(shapes).skip(1) {
            let bad_rank = s.rank() != rank;
            let bad_dims = !bad_rank
                && s.dims()
                    .iter()
                    .zip(&shapes[0].0)
                    .enumerate()
                    .any(|(i, (x, y))| i != a && x != y);
            if bad_rank || bad_dims {
                let axis_name = if rank == 3 && a == 0 {
                    " (channels)"
                } else {
                    ""
                };
                return Err(Error::shape(
                    node,
                    format!(
                        "cannot concatenate '{}' {} and '{name}' {s} along axis {}{axis_name}: all other dimensions must match. \
                         Pool, resize or flatten the inputs to a common size first",
                        names[0], shapes[0], a + 1
                    ),
                ));
            }
            out[a] += s.dims()[a];
        }
        Ok(Shape::new(out))
    }
}

impl LayerOp for Concat {
    fn base_name(&self) -> &'static str {
        "concatenate"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        Concat::infer_shapes(ctx.node, self.axis, ctx.input_names, ctx.input_shapes)
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let a = resolve_axis(self.axis, inputs[0].rank()).expect("checked at build");
        Tensor::cat(inputs, a).at_node(ctx.node)
    }
}
