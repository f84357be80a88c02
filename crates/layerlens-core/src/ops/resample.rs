//! Layers that change layout or resolution: transposed convolution, padding,
//! axis permutation and upsampling (ONNX `ConvTranspose`, `Pad`, `Transpose`,
//! `Resize`/`Upsample`; PyTorch `ConvTranspose2d`, `F.pad`, `permute`, `Upsample`).

use super::padding::{check_positive, pad_hw};
use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A 2-D transposed convolution with an IOHW kernel `[in, out, kh, kw]` (PyTorch's layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose2d {
    /// Output channels.
    pub filters: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding removed from each border of the full output.
    pub padding: usize,
    /// Extra rows/columns added at the bottom/right.
    pub output_padding: usize,
    /// Dilation.
    pub dilation: usize,
    /// Whether a bias is added.
    pub bias: bool,
    /// Input channels, resolved when first applied.
    #[serde(default)]
    pub in_channels: usize,
}

impl ConvTranspose2d {
    /// `filters` outputs, square `kernel`, stride 1, no padding, bias.
    pub fn new(filters: usize, kernel: usize) -> Self {
        ConvTranspose2d {
            filters,
            kernel,
            stride: 1,
            padding: 0,
            output_padding: 0,
            dilation: 1,
            bias: true,
            in_channels: 0,
        }
    }
}

impl LayerOp for ConvTranspose2d {
    fn base_name(&self) -> &'static str {
        "conv2d_transpose"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "conv2d_transpose")?;
        let (c, h, w) = s.chw().expect("rank checked");
        check_positive(
            ctx.node,
            "kernel/stride/dilation",
            [self.kernel.min(self.stride).min(self.dilation), 1],
        )?;
        if self.in_channels != 0 && self.in_channels != c {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "this transposed convolution expects {} input channels, but '{}' has {c} ({s})",
                    self.in_channels, ctx.input_names[0]
                ),
            ));
        }
        if self.output_padding >= self.stride.max(self.dilation) {
            return Err(Error::invalid(
                ctx.node,
                "output_padding must be smaller than stride or dilation",
            ));
        }
        self.in_channels = c;
        let out = |n: usize| -> Result<usize> {
            let full = n
                .checked_sub(1)
                .and_then(|n| n.checked_mul(self.stride))
                .and_then(|a| {
                    self.dilation
                        .checked_mul(self.kernel - 1)
                        .and_then(|b| a.checked_add(b))
                })
                .and_then(|a| a.checked_add(self.output_padding + 1))
                .ok_or_else(|| {
                    Error::invalid(ctx.node, "transposed convolution geometry overflows")
                })?;
            full.checked_sub(self.padding.saturating_mul(2))
                .filter(|&v| v > 0)
                .ok_or_else(|| {
                    Error::shape(
                        ctx.node,
                        format!("padding {} removes the whole output", self.padding),
                    )
                })
        };
        Ok(Shape::new([self.filters, out(h)?, out(w)?]))
    }
    fn param_specs(&self) -> Vec<ParamSpec> {
        let rf = self.kernel * self.kernel;
        let mut v = vec![ParamSpec {
            name: "weight".into(),
            shape: vec![self.in_channels, self.filters, self.kernel, self.kernel],
            kind: ParamKind::Trainable,
            init: Init::GlorotUniform {
                fan_in: self.filters * rf,
                fan_out: self.in_channels * rf,
            },
        }];
        if self.bias {
            v.push(ParamSpec {
                name: "bias".into(),
                shape: vec![self.filters],
                kind: ParamKind::Trainable,
                init: Init::Zeros,
            });
        }
        v
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let w = ctx.param("weight")?;
        let mut y = inputs[0]
            .conv_transpose2d(
                &w,
                self.padding,
                self.output_padding,
                self.stride,
                self.dilation,
            )
            .at_node(ctx.node)?;
        if self.bias {
            y = y
                .broadcast_add(
                    &ctx.param("bias")?
                        .reshape((1, self.filters, 1, 1))
                        .at_node(ctx.node)?,
                )
                .at_node(ctx.node)?;
        }
        Ok(y)
    }
    fn macs(&self, inputs: &[Shape], _output: &Shape) -> u64 {
        (inputs[0].elem_count() * self.filters * self.kernel * self.kernel) as u64
    }
}

/// How [`Pad2d`] fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    /// A constant value.
    Constant(f32),
    /// Repeat the edge value (ONNX `edge`, PyTorch `replicate`).
    Edge,
}

/// Pads the spatial axes by `[top, bottom, left, right]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pad2d {
    /// `[top, bottom, left, right]`.
    pub pads: [usize; 4],
    /// Fill.
    pub mode: PadMode,
}

impl LayerOp for Pad2d {
    fn base_name(&self) -> &'static str {
        "zero_padding2d"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "padding")?;
        let (c, h, w) = s.chw().expect("rank checked");
        let padded = |n: usize, a: usize, b: usize| {
            n.checked_add(a)
                .and_then(|n| n.checked_add(b))
                .ok_or_else(|| Error::invalid(ctx.node, format!("pads {:?} overflow", self.pads)))
        };
        Ok(Shape::new([
            c,
            padded(h, self.pads[0], self.pads[1])?,
            padded(w, self.pads[2], self.pads[3])?,
        ]))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let [t, b, l, r] = self.pads;
        match self.mode {
            PadMode::Constant(v) => pad_hw(&inputs[0], self.pads, v).at_node(ctx.node),
            PadMode::Edge => inputs[0]
                .pad_with_same(2, t, b)
                .and_then(|x| x.pad_with_same(3, l, r))
                .at_node(ctx.node),
        }
    }
}

/// Permutes the per-sample axes (the batch axis stays first): `perm` lists
/// per-sample axes, so `[1, 2, 0]` turns `(N, C, H, W)` into `(N, H, W, C)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permute {
    /// A permutation of `0..rank` over the per-sample axes.
    pub perm: Vec<usize>,
}

impl LayerOp for Permute {
    fn base_name(&self) -> &'static str {
        "permute"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        ctx.expect_inputs(1)?;
        let s = &ctx.input_shapes[0];
        let mut seen = self.perm.clone();
        seen.sort_unstable();
        if seen != (0..s.rank()).collect::<Vec<_>>() {
            return Err(Error::invalid(
                ctx.node,
                format!(
                    "{:?} is not a permutation of the {} per-sample axes of {s}",
                    self.perm,
                    s.rank()
                ),
            ));
        }
        Ok(Shape::new(
            self.perm.iter().map(|&p| s.dims()[p]).collect::<Vec<_>>(),
        ))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let full: Vec<usize> = std::iter::once(0)
            .chain(self.perm.iter().map(|&p| p + 1))
            .collect();
        inputs[0]
            .permute(full)
            .and_then(|t| t.contiguous())
            .at_node(ctx.node)
    }
}

/// How [`Upsample`] interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsampleMode {
    /// Nearest neighbour, source index `floor(dst * in / out)` (PyTorch's and
    /// ONNX's `asymmetric` + `floor`).
    Nearest,
    /// Bilinear with half-pixel centres (PyTorch `align_corners=False`).
    Bilinear,
    /// Bilinear with aligned corners (PyTorch `align_corners=True`).
    BilinearAlignCorners,
}

/// Resizes the spatial axes to a fixed `(height, width)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsample {
    /// Output `[height, width]`.
    pub size: [usize; 2],
    /// Interpolation.
    pub mode: UpsampleMode,
}

impl LayerOp for Upsample {
    fn base_name(&self) -> &'static str {
        "up_sampling2d"
    }
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "upsampling")?;
        check_positive(ctx.node, "output size", self.size)?;
        Ok(Shape::new([s.dims()[0], self.size[0], self.size[1]]))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let [h, w] = self.size;
        match self.mode {
            UpsampleMode::Nearest => inputs[0].upsample_nearest2d(h, w),
            UpsampleMode::Bilinear => inputs[0].upsample_bilinear2d(h, w, false),
            UpsampleMode::BilinearAlignCorners => inputs[0].upsample_bilinear2d(h, w, true),
        }
        .at_node(ctx.node)
    }
}
