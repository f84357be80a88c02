//! 2-D convolution (Keras `Conv2D`, PyTorch `nn.Conv2d`).

use super::padding::{check_positive, window_output};
use super::{Activation, ForwardCtx, InferCtx, LayerOp, Padding};
use crate::error::{Error, NodeContext, Result};
use crate::kernels::conv::FusedActivation;
use crate::kernels::{self, ChannelAffine, ConvParams};
use crate::params::{Init, ParamKind, ParamSpec};
use crate::shape::Shape;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A 2-D convolution over NCHW input with an OIHW kernel (`[out, in/groups, kh, kw]`).
///
/// ```
/// use layerlens_core::ops::{Conv2d, Activation, Padding};
/// let c = Conv2d::new(32, 3).padding(Padding::Same).activation(Activation::Relu);
/// assert_eq!(c.filters, 32);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Output channels.
    pub filters: usize,
    /// Kernel `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Border handling.
    pub padding: Padding,
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Channel groups (`in_channels` for a depthwise convolution).
    pub groups: usize,
    /// Whether a bias is added.
    pub bias: bool,
    /// Activation applied after the bias, as Keras' `activation=` argument; the
    /// node's output is the activated value, as in Keras.
    pub activation: Option<Activation>,
    /// Input channels, resolved when the layer is first applied.
    #[serde(default)]
    pub in_channels: usize,
}

impl Conv2d {
    /// `filters` output channels with a square `kernel`, stride 1, valid padding, bias.
    pub fn new(filters: usize, kernel: usize) -> Self {
        Conv2d {
            filters,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: Padding::Valid,
            dilation: [1, 1],
            groups: 1,
            bias: true,
            activation: None,
            in_channels: 0,
        }
    }
    /// Sets a non-square kernel.
    pub fn kernel_hw(mut self, h: usize, w: usize) -> Self {
        self.kernel = [h, w];
        self
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
    /// Sets the dilation.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Sets the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Enables or disables the bias.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    /// Sets the fused activation.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = Some(a);
        self
    }

    /// `[top, bottom, left, right]` padding for an input of `(h, w)`.
    pub fn pads(&self, hw: (usize, usize)) -> [usize; 4] {
        self.padding
            .resolve(hw, self.kernel, self.stride, self.dilation)
    }
}

/// Runs a convolution with an OIHW kernel (layerlens' CPU kernels, or candle's
/// elsewhere; see [`crate::kernels`]).
pub(crate) fn conv2d_forward(
    x: &Tensor,
    kernel: &Tensor,
    pads: [usize; 4],
    stride: usize,
    dilation: usize,
    groups: usize,
) -> candle_core::Result<Tensor> {
    kernels::conv2d(
        x,
        kernel,
        &ConvParams {
            stride: [stride, stride],
            dilation: [dilation, dilation],
            pads,
            groups,
        },
    )
}

impl Conv2d {
    /// The kernel parameters for an input of `(h, w)`.
    pub(crate) fn conv_params(&self, hw: (usize, usize)) -> ConvParams {
        ConvParams {
            stride: self.stride,
            dilation: self.dilation,
            pads: self.pads(hw),
            groups: self.groups,
        }
    }
}

impl LayerOp for Conv2d {
    fn base_name(&self) -> &'static str {
        "conv2d"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "conv2d")?;
        let (c, h, w) = s.chw().expect("rank checked");
        let node = ctx.node;
        check_positive(node, "kernel size", self.kernel)?;
        check_positive(node, "stride", self.stride)?;
        check_positive(node, "dilation", self.dilation)?;
        if self.filters == 0 || self.groups == 0 {
            return Err(Error::invalid(
                node,
                "filters and groups must be at least 1",
            ));
        }
        if self.in_channels != 0 && self.in_channels != c {
            return Err(Error::shape(
                node,
                format!(
                    "this conv2d's kernel expects {} input channels, but input '{}' has {} channels (shape {})",
                    self.in_channels, ctx.input_names[0], c, s
                ),
            ));
        }
        if !c.is_multiple_of(self.groups) || !self.filters.is_multiple_of(self.groups) {
            return Err(Error::shape(
                node,
                format!(
                    "groups={} must divide both the input channels ({c}, from '{}') and the filters ({})",
                    self.groups, ctx.input_names[0], self.filters
                ),
            ));
        }
        self.in_channels = c;
        let pads = self.pads((h, w));
        let (oh, ow) = window_output(
            node,
            "conv2d",
            (h, w),
            self.kernel,
            self.stride,
            self.dilation,
            pads,
        )?;
        Ok(Shape::new([self.filters, oh, ow]))
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        let per_group = self.in_channels / self.groups.max(1);
        let rf = self.kernel[0] * self.kernel[1];
        let mut v = vec![ParamSpec {
            name: "weight".into(),
            shape: vec![self.filters, per_group, self.kernel[0], self.kernel[1]],
            kind: ParamKind::Trainable,
            init: Init::GlorotUniform {
                fan_in: per_group * rf,
                fan_out: self.filters / self.groups.max(1) * rf,
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
        let x = &inputs[0];
        let (_, _, h, w) = x.dims4().at_node(ctx.node)?;
        let weight = ctx.param("weight")?;
        let p = self.conv_params((h, w));
        let bias = if self.bias {
            Some(ctx.param("bias")?)
        } else {
            None
        };
        let fused_act = self.activation.as_ref().and_then(Activation::fusable);
        if !(x.track_op() || weight.track_op() || bias.as_ref().is_some_and(|b| b.track_op()))
            && (self.activation.is_none() || fused_act.is_some())
        {
            // Inference: bias and activation in the GEMM's epilogue.
            let shift = match &bias {
                Some(b) => Some(b.to_vec1::<f32>().at_node(ctx.node)?),
                None => None,
            };
            let affine = ChannelAffine { scale: None, shift };
            let act = fused_act.unwrap_or(FusedActivation::None);
            return kernels::conv2d_fused(x, &weight, &p, affine, None, act).at_node(ctx.node);
        }
        if self.activation.is_none() || fused_act.is_some() {
            // Training or gradients: one differentiable op with its own backward.
            let act = fused_act.unwrap_or(FusedActivation::None);
            return kernels::conv2d_bias_act(x, &weight, bias.as_ref(), &p, act).at_node(ctx.node);
        }
        let mut y = kernels::conv2d(x, &weight, &p).at_node(ctx.node)?;
        if let Some(b) = bias {
            y = y
                .broadcast_add(&b.reshape((1, self.filters, 1, 1)).at_node(ctx.node)?)
                .at_node(ctx.node)?;
        }
        match &self.activation {
            Some(a) => a.apply(&y).at_node(ctx.node),
            None => Ok(y),
        }
    }

    fn macs(&self, _inputs: &[Shape], output: &Shape) -> u64 {
        let per_out = (self.in_channels / self.groups.max(1)) * self.kernel[0] * self.kernel[1];
        (output.elem_count() * per_out) as u64
    }
}
