//! Built-in, saveable Lambdas. Axes are axes of the batched NCHW tensor
//! (axis 0 is the batch and cannot be reduced); negative axes count from the end.

use super::{CustomOp, LambdaCtx, ShapeCtx};
use crate::error::{Error, NodeContext, Result};
use crate::ops::conv2d::conv2d_forward;
use crate::ops::padding::{check_positive, window_output};
use crate::ops::{Concat, Flatten, InferCtx, LayerOp, Padding, Reshape};
use crate::shape::{resolve_axis, Shape};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("built-in Lambda arguments serialise")
}

fn resolve_axes(node: &str, axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for &a in axes {
        match resolve_axis(a, rank) {
            Some(0) => {
                return Err(Error::invalid(
                    node,
                    format!("axis {a} is the batch axis; reduce per sample axes (1..{rank})"),
                ))
            }
            Some(r) if !out.contains(&r) => out.push(r),
            Some(_) => return Err(Error::invalid(node, format!("axis {a} given twice"))),
            None => {
                return Err(Error::invalid(
                    node,
                    format!("axis {a} out of range for a rank-{rank} tensor"),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(node, "no axes to reduce"));
    }
    out.sort_unstable();
    Ok(out)
}

fn one_input<'a>(ctx: &'a ShapeCtx) -> Result<&'a Shape> {
    match ctx.input_shapes {
        [s] => Ok(s),
        _ => Err(Error::invalid(
            ctx.node,
            format!("expects one input, got {}", ctx.input_shapes.len()),
        )),
    }
}

/// Which reduction [`Reduce`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceKind {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
}

/// Mean, sum or max over axes: `Reduce::mean([2, 3])` is the spatial mean of an
/// NCHW map (Keras `K.mean(x, axis=(1, 2))` on NHWC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reduce {
    /// Which reduction.
    pub kind: ReduceKind,
    /// Axes of the batched tensor.
    pub axes: Vec<isize>,
    /// Keep reduced axes with size 1.
    #[serde(default)]
    pub keepdims: bool,
}

impl Reduce {
    /// Mean over `axes`.
    pub fn mean(axes: impl Into<Vec<isize>>) -> Self {
        Reduce {
            kind: ReduceKind::Mean,
            axes: axes.into(),
            keepdims: false,
        }
    }
    /// Sum over `axes`.
    pub fn sum(axes: impl Into<Vec<isize>>) -> Self {
        Reduce {
            kind: ReduceKind::Sum,
            axes: axes.into(),
            keepdims: false,
        }
    }
    /// Max over `axes`.
    pub fn max(axes: impl Into<Vec<isize>>) -> Self {
        Reduce {
            kind: ReduceKind::Max,
            axes: axes.into(),
            keepdims: false,
        }
    }
    /// Keeps reduced axes.
    pub fn keepdims(mut self, k: bool) -> Self {
        self.keepdims = k;
        self
    }
}

impl CustomOp for Reduce {
    fn type_name(&self) -> &str {
        match self.kind {
            ReduceKind::Mean => "mean",
            ReduceKind::Sum => "sum",
            ReduceKind::Max => "max",
        }
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some((|| {
            let s = one_input(ctx)?;
            let axes = resolve_axes(ctx.node, &self.axes, s.rank() + 1)?;
            let dims = s
                .dims()
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| match (axes.contains(&(i + 1)), self.keepdims) {
                    (true, true) => Some(1),
                    (true, false) => None,
                    (false, _) => Some(d),
                })
                .collect::<Vec<_>>();
            Ok(Shape::new(dims))
        })())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let axes = resolve_axes(ctx.node, &self.axes, x.rank())?;
        let mut y = x.clone();
        // Reduce from the last axis so earlier indices stay valid.
        for &a in axes.iter().rev() {
            y = match self.kind {
                ReduceKind::Mean => y.mean_keepdim(a),
                ReduceKind::Sum => y.sum_keepdim(a),
                ReduceKind::Max => y.max_keepdim(a),
            }
            .at_node(ctx.node)?;
            if !self.keepdims {
                y = y.squeeze(a).at_node(ctx.node)?;
            }
        }
        Ok(y)
    }
}

/// `x / sqrt(max(sum(x^2, axis), eps))`, Keras' `l2_normalize`. An all-zero
/// slice gives zeros, never NaN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L2Normalize {
    /// Axis of the batched tensor (1 = channels, Keras' `axis=-1` in NHWC).
    pub axis: isize,
    /// Lower bound on the squared norm (Keras: 1e-12).
    pub eps: f64,
}

impl L2Normalize {
    /// L2 normalisation over `axis` with Keras' epsilon 1e-12.
    pub fn new(axis: isize) -> Self {
        L2Normalize { axis, eps: 1e-12 }
    }
}

impl CustomOp for L2Normalize {
    fn type_name(&self) -> &str {
        "l2_normalize"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some((|| {
            let s = one_input(ctx)?;
            resolve_axes(ctx.node, &[self.axis], s.rank() + 1)?;
            if self.eps.is_nan() || self.eps <= 0.0 {
                return Err(Error::invalid(ctx.node, "l2_normalize epsilon must be > 0"));
            }
            Ok(s.clone())
        })())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let a = resolve_axes(ctx.node, &[self.axis], x.rank())?[0];
        let sq = x.sqr().and_then(|s| s.sum_keepdim(a)).at_node(ctx.node)?;
        let norm = sq
            .maximum(self.eps)
            .and_then(|m| m.sqrt())
            .at_node(ctx.node)?;
        x.broadcast_div(&norm).at_node(ctx.node)
    }
}

/// Multiplies by a constant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// The factor.
    pub factor: f64,
}

impl CustomOp for Scale {
    fn type_name(&self) -> &str {
        "scale"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some(one_input(ctx).cloned())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        (&inputs[0] * self.factor).at_node(ctx.node)
    }
}

/// Multiplies by one element of a referenced weight (seed 003 example 1: scale
/// by `dense.kernel[0]`). The weight is the node's first [`super::WeightRef`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleByWeight {
    /// Index of the element in the referenced tensor (one entry per dim).
    pub index: Vec<usize>,
}

impl CustomOp for ScaleByWeight {
    fn type_name(&self) -> &str {
        "scale_by_weight"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some((|| {
            let s = one_input(ctx)?;
            let [(key, dims)] = ctx.weights else {
                return Err(Error::invalid(
                    ctx.node,
                    "scale_by_weight needs exactly one weight reference",
                ));
            };
            if dims.len() != self.index.len() || self.index.iter().zip(dims).any(|(i, d)| i >= d) {
                return Err(Error::invalid(
                    ctx.node,
                    format!(
                        "index {:?} is outside weight '{key}' of shape {dims:?}",
                        self.index
                    ),
                ));
            }
            Ok(s.clone())
        })())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let mut w = ctx.weights[0].clone();
        for &i in &self.index {
            w = w
                .narrow(0, i, 1)
                .and_then(|t| t.squeeze(0))
                .at_node(ctx.node)?;
        }
        inputs[0].broadcast_mul(&w).at_node(ctx.node)
    }
}

/// A convolution whose kernel is another layer's weight (seed 003 example 2):
/// first weight reference is the OIHW kernel, an optional second one the bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2dRef {
    /// Stride (square).
    pub stride: usize,
    /// Border handling.
    pub padding: Padding,
    /// Dilation (square).
    pub dilation: usize,
    /// Groups.
    pub groups: usize,
}

impl Default for Conv2dRef {
    fn default() -> Self {
        Conv2dRef {
            stride: 1,
            padding: Padding::Valid,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv2dRef {
    /// Stride 1, given padding, no dilation, one group.
    pub fn new(padding: Padding) -> Self {
        Conv2dRef {
            padding,
            ..Default::default()
        }
    }
    fn kernel_hw(dims: &[usize]) -> [usize; 2] {
        [dims[2], dims[3]]
    }
}

impl CustomOp for Conv2dRef {
    fn type_name(&self) -> &str {
        "conv2d_ref"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some((|| {
            let s = one_input(ctx)?;
            let (kkey, kd) = ctx.weights.first().ok_or_else(|| {
                Error::invalid(
                    ctx.node,
                    "conv2d_ref needs the kernel as its first weight reference",
                )
            })?;
            let Some((c, h, w)) = s.chw() else {
                return Err(Error::shape(
                    ctx.node,
                    format!(
                        "conv2d_ref expects (N, C, H, W), input '{}' is {s}",
                        ctx.input_names[0]
                    ),
                ));
            };
            if kd.len() != 4 {
                return Err(Error::shape(
                    ctx.node,
                    format!("kernel '{kkey}' must be OIHW (rank 4), has shape {kd:?}"),
                ));
            }
            check_positive(ctx.node, "stride", [self.stride, self.stride])?;
            check_positive(ctx.node, "dilation", [self.dilation, self.dilation])?;
            if self.groups == 0 || kd[1] * self.groups != c {
                return Err(Error::shape(
                    ctx.node,
                    format!(
                        "kernel '{kkey}' {kd:?} expects {} input channels (groups {}), but input '{}' has {c} channels (shape {s})",
                        kd[1] * self.groups.max(1),
                        self.groups,
                        ctx.input_names[0]
                    ),
                ));
            }
            if let Some((bkey, bd)) = ctx.weights.get(1) {
                if bd.as_slice() != [kd[0]] {
                    return Err(Error::shape(
                        ctx.node,
                        format!("bias '{bkey}' {bd:?} does not match kernel '{kkey}' {kd:?}"),
                    ));
                }
            }
            let k = Self::kernel_hw(kd);
            let st = [self.stride; 2];
            let dl = [self.dilation; 2];
            let pads = self.padding.resolve((h, w), k, st, dl);
            let (oh, ow) = window_output(ctx.node, "conv2d_ref", (h, w), k, st, dl, pads)?;
            Ok(Shape::new([kd[0], oh, ow]))
        })())
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let k = &ctx.weights[0];
        let (_, _, h, w) = x.dims4().at_node(ctx.node)?;
        let kd = k.dims();
        let pads = self.padding.resolve(
            (h, w),
            Self::kernel_hw(kd),
            [self.stride; 2],
            [self.dilation; 2],
        );
        let mut y = conv2d_forward(x, k, pads, self.stride, self.dilation, self.groups)
            .at_node(ctx.node)?;
        if let Some(b) = ctx.weights.get(1) {
            y = y
                .broadcast_add(&b.reshape((1, kd[0], 1, 1)).at_node(ctx.node)?)
                .at_node(ctx.node)?;
        }
        Ok(y)
    }
    fn macs(&self, inputs: &[Shape], output: &Shape) -> u64 {
        let _ = inputs;
        output.elem_count() as u64
    }
}

// The structural layers double as Lambdas, for users who write
// `Lambda(lambda x: Reshape(...)(x))` in Keras.

fn infer_via_layer(layer: &mut dyn LayerOp, ctx: &ShapeCtx) -> Result<Shape> {
    layer.infer(&InferCtx {
        node: ctx.node,
        input_names: ctx.input_names,
        input_shapes: ctx.input_shapes,
    })
}

impl CustomOp for Concat {
    fn type_name(&self) -> &str {
        "concat"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some(infer_via_layer(&mut self.clone(), ctx))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let a = resolve_axis(self.axis, inputs[0].rank())
            .ok_or_else(|| Error::invalid(ctx.node, "bad axis"))?;
        Tensor::cat(inputs, a).at_node(ctx.node)
    }
}

impl CustomOp for Reshape {
    fn type_name(&self) -> &str {
        "reshape"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some(infer_via_layer(&mut self.clone(), ctx))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        let x = &inputs[0];
        let per = Reshape::resolve(ctx.node, &self.target, &Shape::from_tensor_dims(x.dims()))?;
        x.reshape(per.with_batch(x.dim(0).at_node(ctx.node)?))
            .at_node(ctx.node)
    }
}

impl CustomOp for Flatten {
    fn type_name(&self) -> &str {
        "flatten"
    }
    fn args(&self) -> serde_json::Value {
        json(self)
    }
    fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some(infer_via_layer(&mut Flatten, ctx))
    }
    fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
        inputs[0].flatten_from(1).at_node(ctx.node)
    }
}
