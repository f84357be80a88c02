//! Strided slicing of per-sample axes (ONNX `Slice`, PyTorch `x[:, a:b:s]`).

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Keeps indices `start, start + step, …` (stopping before `end`) of each
/// listed per-sample axis; the batch axis is never sliced. Bounds follow
/// ONNX: negative values count from the end and are clamped to the axis, a
/// negative step walks backwards.
///
/// ```
/// use layerlens_core::ops::Slice;
/// let s = Slice { axes: vec![0], starts: vec![0], ends: vec![i64::MAX], steps: vec![2] };
/// assert_eq!(s.steps, [2]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Per-sample axes (0 = the first axis after the batch).
    pub axes: Vec<usize>,
    /// First index per axis.
    pub starts: Vec<i64>,
    /// End (exclusive) per axis.
    pub ends: Vec<i64>,
    /// Step per axis, never 0.
    pub steps: Vec<i64>,
}

impl Slice {
    /// The kept indices of an axis of length `len`, as ONNX computes them.
    fn indices(start: i64, end: i64, step: i64, len: usize) -> Vec<usize> {
        let len = len as i64;
        let fix = |v: i64| if v < 0 { v.saturating_add(len) } else { v };
        let (s, e) = (fix(start), fix(end));
        let mut out = Vec::new();
        if step > 0 {
            let (mut i, e) = (s.clamp(0, len), e.clamp(0, len));
            while i < e {
                out.push(i as usize);
                i += step;
            }
        } else {
            let (mut i, e) = (s.clamp(0, len - 1), e.clamp(-1, len - 1));
            while i > e {
                out.push(i as usize);
                i += step;
            }
        }
        out
    }
}

impl LayerOp for Slice {
    fn base_name(&self) -> &'static str {
        "slice"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        let n = self.axes.len();
        if self.starts.len() != n || self.ends.len() != n || self.steps.len() != n {
            return Err(Error::invalid(
                ctx.node,
                "axes, starts, ends and steps differ in length",
            ));
        }
        let mut dims = s.dims().to_vec();
        for i in 0..n {
            let a = self.axes[i];
            if a >= dims.len() || self.axes[..i].contains(&a) {
                return Err(Error::invalid(
                    ctx.node,
                    format!(
                        "axis {a} is repeated or out of range for input '{}' {s}",
                        ctx.input_names[0]
                    ),
                ));
            }
            if self.steps[i] == 0 {
                return Err(Error::invalid(ctx.node, "a slice step of 0"));
            }
            dims[a] = Self::indices(self.starts[i], self.ends[i], self.steps[i], dims[a]).len();
            if dims[a] == 0 {
                return Err(Error::shape(
                    ctx.node,
                    format!(
                        "slicing axis {a} of input '{}' {s} from {} to {} by {} keeps nothing",
                        ctx.input_names[0], self.starts[i], self.ends[i], self.steps[i]
                    ),
                ));
            }
        }
        Ok(Shape::new(dims))
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let mut y = inputs[0].clone();
        for i in 0..self.axes.len() {
            let dim = self.axes[i] + 1;
            let len = y.dim(dim).at_node(ctx.node)?;
            let idx = Self::indices(self.starts[i], self.ends[i], self.steps[i], len);
            let contiguous_run = self.steps[i] == 1;
            y = if contiguous_run {
                y.narrow(dim, idx[0], idx.len())
            } else {
                let idx: Vec<u32> = idx.iter().map(|&v| v as u32).collect();
                let n = idx.len();
                Tensor::from_vec(idx, n, y.device()).and_then(|t| y.index_select(&t, dim))
            }
            .at_node(ctx.node)?;
        }
        y.contiguous().at_node(ctx.node)
    }
}
