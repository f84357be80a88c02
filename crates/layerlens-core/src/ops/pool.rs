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
        let fast = crate::kernels::PoolParams {
            max: self.kind == PoolKind::Max,
            kernel: self.kernel,
            stride: self.stride,
            pads,
            count_include_pad: self.count_include_pad,
        };
        if let Some(y) = crate::kernels::pool2d(x, &fast) {
            return y.at_node(node);
        }
        match self.kind {
            PoolKind::Max => pad_hw(x, pads, f32::NEG_INFINITY)
                .and_then(|p| pool_valid(&p, PoolKind::Max, k, s))
                .at_node(node),
            PoolKind::Avg => {
                let y = pad_hw(x, pads, 0.0)
                    .and_then(|p| pool_valid(&p, PoolKind::Avg, k, s))
                    .at_node(node)?;
                if self.count_include_pad || pads == [0; 4] {
                    return Ok(y);
                }
                // Divide by the number of real (unpadded) cells in each window instead.
                let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device()).at_node(node)?;
                let frac = pad_hw(&ones, pads, 0.0)
                    .and_then(|p| pool_valid(&p, PoolKind::Avg, k, s))
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

/// Valid (unpadded) pooling with correct gradients.
///
/// candle 0.11's pooling backward has three problems: it upsamples the output
/// gradient with nearest neighbour to the input size, which puts gradients in
/// the wrong cells when the size is not a multiple of the stride (11 -> 5 in the
/// seed CNN); its max-pool gradient is scaled by `ties / k²` instead of
/// `1 / ties` (a quarter of the true gradient for 2×2 windows); and it refuses
/// kernel != stride. So, while gradients are tracked, max pooling is built from
/// reshapes (kernel == stride) or strided views (otherwise) and the first
/// maximum of each window is gathered, so the gradient reaches that element only,
/// as in PyTorch; average pooling with kernel == stride crops to
/// the covered region first, which makes candle's backward exact. Without
/// tracking, candle's fast kernels run. Values are identical on every path.
pub(crate) fn pool_valid(
    x: &Tensor,
    kind: PoolKind,
    k: (usize, usize),
    s: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let oh = (h - k.0) / s.0 + 1;
    let ow = (w - k.1) / s.1 + 1;
    let native = |x: &Tensor| match kind {
        PoolKind::Max => x.max_pool2d_with_stride(k, s),
        PoolKind::Avg => x.avg_pool2d_with_stride(k, s),
    };
    if !x.track_op() {
        return native(x);
    }
    if k == s {
        let x = if oh * s.0 != h || ow * s.1 != w {
            x.narrow(2, 0, oh * s.0)?.narrow(3, 0, ow * s.1)?
        } else {
            x.clone()
        };
        return match kind {
            PoolKind::Avg => native(&x),
            PoolKind::Max => {
                let windows = x
                    .reshape((n, c, oh, k.0, ow, k.1))?
                    .permute((0, 1, 2, 4, 3, 5))?
                    .reshape((n, c, oh, ow, k.0 * k.1))?;
                first_max(&windows, 4)
            }
        };
    }
    // Pad so that every strided view below fits; padded cells are never selected.
    let hp = (s.0 * oh + k.0).max(h);
    let wp = (s.1 * ow + k.1).max(w);
    let xp = x
        .pad_with_zeros(2, 0, hp - h)?
        .pad_with_zeros(3, 0, wp - w)?;
    let mut views = Vec::with_capacity(k.0 * k.1);
    for i in 0..k.0 {
        // Rows i, i + s, ..., i + s * (oh - 1).
        let rows = xp
            .narrow(2, i, s.0 * oh)?
            .reshape((n, c, oh, s.0, wp))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for j in 0..k.1 {
            let v = rows
                .narrow(3, j, s.1 * ow)?
                .reshape((n, c, oh, ow, s.1))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            views.push(v);
        }
    }
    let stacked = Tensor::stack(&views, 0)?;
    match kind {
        PoolKind::Max => first_max(&stacked, 0),
        PoolKind::Avg => stacked.mean(0),
    }
}

/// The maximum along `dim`, differentiable into the first maximal element only
/// (PyTorch's and TensorFlow's max-pool gradient; `max`'s own backward would give
/// every tied element, e.g. a window of ReLU zeros, the full gradient).
fn first_max(windows: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let idx = windows.detach().argmax_keepdim(dim)?;
    windows.contiguous()?.gather(&idx, dim)?.squeeze(dim)
}
