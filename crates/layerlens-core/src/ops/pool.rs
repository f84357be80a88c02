//! Max and average pooling (Keras `MaxPooling2D` / `AveragePooling2D` /
//! `GlobalAveragePooling2D`, PyTorch `MaxPool2d` / `AvgPool2d` / `AdaptiveAvgPool2d(1)`).

use super::padding::{check_positive, pad_hw, window_output};
use super::{ForwardCtx, InferCtx, LayerOp, Padding};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Which reduction a pooling window applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Maximum of the window (padding never wins).
    Max,
    /// Mean of the window.
    Avg,
}

/// A 2-D pooling window.
///
/// ```
/// use layerlens_core::ops::Pool2d;
/// let p = Pool2d::max(2); // Keras MaxPooling2D((2, 2)): stride defaults to the window
/// assert_eq!(p.stride, [2, 2]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Max or average.
    pub kind: PoolKind,
    /// Window `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Border handling.
    pub padding: Padding,
    /// For average pooling with padding: whether padded zeros count in the
    /// divisor (PyTorch's default `true`; Keras/TensorFlow behave as `false`).
    pub count_include_pad: bool,
}

impl Pool2d {
    /// Max pooling with a square window and stride equal to the window.
    pub fn max(k: usize) -> Self {
        Self::new(PoolKind::Max, [k, k])
    }
    /// Average pooling with a square window and stride equal to the window.
    pub fn avg(k: usize) -> Self {
        Self::new(PoolKind::Avg, [k, k])
    }
    /// A pooling window of `kernel` with stride equal to the window (Keras' default).
    pub fn new(kind: PoolKind, kernel: [usize; 2]) -> Self {
        Pool2d {
            kind,
            kernel,
            stride: kernel,
            padding: Padding::Valid,
            count_include_pad: true,
        }
    }
    /// Sets the stride.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Sets the padding.
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Sets whether padded zeros count in an average.
    pub fn count_include_pad(mut self, v: bool) -> Self {
        self.count_include_pad = v;
        self
    }
    fn pads(&self, hw: (usize, usize)) -> [usize; 4] {
        self.padding.resolve(hw, self.kernel, self.stride, [1, 1])
    }
}

impl LayerOp for Pool2d {
    fn base_name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pooling2d",
            PoolKind::Avg => "average_pooling2d",
        }
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let what = self.base_name();
        let s = ctx.single_of_rank(3, what)?;
        let (c, h, w) = s.chw().expect("rank checked");
        check_positive(ctx.node, "pool size", self.kernel)?;
        check_positive(ctx.node, "pool stride", self.stride)?;
        let pads = self.pads((h, w));
        if pads[0] >= self.kernel[0]
            || pads[1] >= self.kernel[0]
            || pads[2] >= self.kernel[1]
            || pads[3] >= self.kernel[1]
        {
            return Err(Error::invalid(
                ctx.node,
                format!(
                    "padding {pads:?} must be smaller than the pool window {:?}",
                    self.kernel
                ),
            ));
        }
        let (oh, ow) = window_output(
            ctx.node,
            what,
            (h, w),
            self.kernel,
            self.stride,
            [1, 1],
            pads,
        )?;
        Ok(Shape::new([c, oh, ow]))
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let node = ctx.node;
        let x = &inputs[0];
        let (_, _, h, w) = x.dims4().at_node(node)?;
        let pads = self.pads((h, w));
        let k = (self.kernel[0], self.kernel[1]);
        let s = (self.stride[0], self.stride[1]);
        match self.kind {
            PoolKind::Max => pad_hw(x, pads, f32::NEG_INFINITY)
                .and_then(|p| p.max_pool2d_with_stride(k, s))
                .at_node(node),
            PoolKind::Avg => {
                let y = pad_hw(x, pads, 0.0)
                    .and_then(|p| p.avg_pool2d_with_stride(k, s))
                    .at_node(node)?;
                if self.count_include_pad || pads == [0; 4] {
                    return Ok(y);
                }
                // Divide by the number of real (unpadded) cells in each window instead.
                let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device()).at_node(node)?;
                let frac = pad_hw(&ones, pads, 0.0)
                    .and_then(|p| p.avg_pool2d_with_stride(k, s))
                    .at_node(node)?;
                y.broadcast_div(&frac).at_node(node)
            }
        }
    }

    fn macs(&self, _inputs: &[Shape], output: &Shape) -> u64 {
        (output.elem_count() * self.kernel[0] * self.kernel[1]) as u64
    }
}

/// Mean over the spatial axes: `(N, C, H, W) -> (N, C)`, or `(N, C, 1, 1)` with `keepdims`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GlobalAvgPool {
    /// Keep the spatial axes as size 1 (PyTorch's `AdaptiveAvgPool2d(1)`); Keras drops them.
    pub keepdims: bool,
}

impl LayerOp for GlobalAvgPool {
    fn base_name(&self) -> &'static str {
        "global_average_pooling2d"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "global average pooling")?;
        let c = s.dims()[0];
        Ok(if self.keepdims {
            Shape::new([c, 1, 1])
        } else {
            Shape::new([c])
        })
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let x = &inputs[0];
        if self.keepdims {
            x.mean_keepdim((2, 3)).at_node(ctx.node)
        } else {
            x.mean((2, 3)).at_node(ctx.node)
        }
    }
}
