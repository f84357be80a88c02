//! General separable spatial resizing with ONNX `Resize` semantics: every
//! interpolation mode (nearest with each rounding, linear, cubic), every
//! coordinate transformation, scales below one, antialiasing and
//! `exclude_outside`. [`Upsample`](super::Upsample) stays the fast path for the
//! common PyTorch cases; this op covers the rest exactly.
//!
//! Each spatial axis is resampled on its own (interpolation is separable): an
//! output index gets a few input taps and weights, computed exactly as the ONNX
//! reference implementation (`onnx/reference/ops/op_resize.py`) does, and the
//! axis is then a gather plus a weighted sum, which candle differentiates.

use super::{ForwardCtx, InferCtx, LayerOp};
use crate::error::{Error, NodeContext, Result};
use crate::shape::Shape;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// How an output coordinate maps back to the input (ONNX
/// `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinateMode {
    /// `(y + 0.5) / scale - 0.5`.
    HalfPixel,
    /// Half-pixel, centred when the output size was rounded.
    HalfPixelSymmetric,
    /// Half-pixel, but `-0.5` for an output of length 1.
    PytorchHalfPixel,
    /// `y * (in - 1) / (out - 1)`.
    AlignCorners,
    /// `y / scale`.
    Asymmetric,
    /// A crop box `[start, end]` per axis in normalised coordinates; outside the
    /// input the output is `extrapolation`.
    TfCropAndResize {
        /// `[start_h, start_w]`.
        start: [f32; 2],
        /// `[end_h, end_w]`.
        end: [f32; 2],
        /// The value outside the input.
        extrapolation: f32,
    },
}

/// Which input pixel nearest-neighbour picks (ONNX `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NearestRounding {
    /// Round, halves down.
    RoundPreferFloor,
    /// Round, halves up.
    RoundPreferCeil,
    /// Floor.
    Floor,
    /// Ceiling.
    Ceil,
}

/// The interpolation kernel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeKernel {
    /// Nearest neighbour.
    Nearest(NearestRounding),
    /// Linear (bilinear in 2-D).
    Linear,
    /// Cubic convolution with coefficient `a` (ONNX `cubic_coeff_a`).
    Cubic {
        /// −0.75 in ONNX and PyTorch, −0.5 in TensorFlow.
        a: f32,
    },
}

/// Resizes the spatial axes of an NCHW map to `size` with ONNX `Resize`
/// semantics.
///
/// ```
/// use layerlens_core::ops::{CoordinateMode, Resize, ResizeKernel};
/// let r = Resize {
///     size: [3, 3],
///     scales: [0.75, 0.75],
///     kernel: ResizeKernel::Linear,
///     coordinates: CoordinateMode::HalfPixel,
///     antialias: true,
///     exclude_outside: false,
/// };
/// assert_eq!(r.size, [3, 3]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resize {
    /// Output `[height, width]`.
    pub size: [usize; 2],
    /// The scale per axis used to map coordinates: the file's scales when it
    /// gives them, else `out / in` (they differ when `in * scale` is not whole).
    pub scales: [f64; 2],
    /// Interpolation kernel.
    pub kernel: ResizeKernel,
    /// Coordinate mapping.
    pub coordinates: CoordinateMode,
    /// Widen linear and cubic kernels when downscaling (ONNX `antialias`).
    pub antialias: bool,
    /// Give taps outside the input zero weight and renormalise.
    pub exclude_outside: bool,
}

/// The taps of one axis: for each output index, `k` input indices and weights,
/// and whether the index lies outside a crop box.
struct AxisTaps {
    k: usize,
    index: Vec<u32>,
    weight: Vec<f32>,
    outside: Vec<bool>,
}

impl Resize {
    fn kernel_coeffs(&self, ratio: f64, scale: f64) -> Vec<f64> {
        match self.kernel {
            ResizeKernel::Nearest(rounding) => {
                if ratio == ratio.trunc() {
                    return vec![0.0, 1.0];
                }
                let right = match rounding {
                    NearestRounding::RoundPreferFloor => ratio > 0.5,
                    NearestRounding::RoundPreferCeil => ratio >= 0.5,
                    NearestRounding::Floor => false,
                    NearestRounding::Ceil => true,
                };
                if right {
                    vec![0.0, 1.0]
                } else {
                    vec![1.0, 0.0]
                }
            }
            ResizeKernel::Linear if self.antialias => {
                let scale = scale.min(1.0);
                let start = (-1.0 / scale).floor() as i64 + 1;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            ResizeKernel::Linear => vec![1.0 - ratio, ratio],
            ResizeKernel::Cubic { a } if self.antialias => {
                let a = a as f64;
                let scale = scale.min(1.0);
                let coeff = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let i_start = (-2.0 / scale).floor() as i64 + 1;
                let i_end = 2 - i_start;
                let c: Vec<f64> = (i_start..i_end)
                    .map(|i| coeff(scale * (i as f64 - ratio)))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|v| v / sum).collect()
            }
            ResizeKernel::Cubic { a } => {
                let a = a as f64;
                let r = ratio;
                let s = 1.0 - ratio;
                vec![
                    ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                    ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                    ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0,
                    ((a * (s + 1.0) - 5.0 * a) * (s + 1.0) + 8.0 * a) * (s + 1.0) - 4.0 * a,
                ]
            }
        }
    }

    /// The taps of spatial axis `axis` (0 = height) for an input of length `len`.
    fn taps(&self, axis: usize, len: usize) -> AxisTaps {
        let out = self.size[axis];
        let scale = self.scales[axis];
        let (len_f, out_f) = (len as f64, scale * len as f64);
        let mut k = 0;
        let (mut index, mut weight, mut outside) = (Vec::new(), Vec::new(), Vec::new());
        for y in 0..out {
            let y = y as f64;
            let mut out_of_box = false;
            let x = match self.coordinates {
                CoordinateMode::HalfPixel => (y + 0.5) / scale - 0.5,
                CoordinateMode::HalfPixelSymmetric => {
                    let adjustment = out as f64 / out_f;
                    let offset = len_f / 2.0 * (1.0 - adjustment);
                    offset + (y + 0.5) / scale - 0.5
                }
                CoordinateMode::PytorchHalfPixel if out_f == 1.0 => -0.5,
                CoordinateMode::PytorchHalfPixel => (y + 0.5) / scale - 0.5,
                CoordinateMode::AlignCorners if out_f == 1.0 => 0.0,
                CoordinateMode::AlignCorners => y * (len_f - 1.0) / (out_f - 1.0),
                CoordinateMode::Asymmetric => y / scale,
                CoordinateMode::TfCropAndResize { start, end, .. } => {
                    let (s, e) = (start[axis] as f64, end[axis] as f64);
                    let x = if out_f == 1.0 {
                        (e - s) * (len_f - 1.0) / 2.0
                    } else {
                        y * (e - s) * (len_f - 1.0) / (out_f - 1.0)
                    } + s * (len_f - 1.0);
                    out_of_box = x < 0.0 || x > len_f - 1.0;
                    x
                }
            };
            // The ratio lies in (0, 1]: the reference prefers the pixel left of x.
            let ratio = if x == x.floor() { 1.0 } else { x - x.floor() };
            let mut coeffs = self.kernel_coeffs(ratio, scale);
            let n = coeffs.len();
            k = n;
            let pad = n.div_ceil(2) as f64;
            let xp = x + pad;
            let p = xp.floor();
            let frac = xp - p;
            let half = (n / 2) as i64;
            let offset = if n.is_multiple_of(2) {
                if frac == 0.0 {
                    -half
                } else {
                    -half + 1
                }
            } else {
                let base = -(((n - 1) / 2) as i64);
                if frac <= 0.5 {
                    base
                } else {
                    base + 1
                }
            };
            let first = p as i64 + offset - pad as i64;
            if self.exclude_outside {
                for (j, c) in coeffs.iter_mut().enumerate() {
                    let i = first + j as i64;
                    if i < 0 || i >= len as i64 {
                        *c = 0.0;
                    }
                }
                let sum: f64 = coeffs.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                coeffs.iter_mut().for_each(|c| *c /= sum);
            }
            for (j, c) in coeffs.iter().enumerate() {
                index.push((first + j as i64).clamp(0, len as i64 - 1) as u32);
                weight.push(*c as f32);
            }
            outside.push(out_of_box);
        }
        AxisTaps {
            k,
            index,
            weight,
            outside,
        }
    }

    fn extrapolation(&self) -> Option<f32> {
        match self.coordinates {
            CoordinateMode::TfCropAndResize { extrapolation, .. } => Some(extrapolation),
            _ => None,
        }
    }

    /// Resamples dimension `dim` (2 or 3) of `x`.
    fn resample_axis(&self, x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
        let len = x.dim(dim)?;
        let taps = self.taps(dim - 2, len);
        let out = self.size[dim - 2];
        let dev = x.device();
        let index = Tensor::from_vec(taps.index, out * taps.k, dev)?;
        let gathered = x.index_select(&index, dim)?;
        let mut shape = gathered.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, taps.k);
        let gathered = gathered.reshape(shape)?;
        let mut wshape = vec![1; gathered.rank()];
        wshape[dim] = out;
        wshape[dim + 1] = taps.k;
        let weight = Tensor::from_vec(taps.weight, wshape, dev)?.to_dtype(x.dtype())?;
        let mut y = gathered.broadcast_mul(&weight)?.sum(dim + 1)?;
        if let Some(value) = self.extrapolation() {
            if taps.outside.iter().any(|&o| o) {
                let mut mshape = vec![1; y.rank()];
                mshape[dim] = out;
                let keep: Vec<f32> = taps
                    .outside
                    .iter()
                    .map(|&o| if o { 0.0 } else { 1.0 })
                    .collect();
                let keep = Tensor::from_vec(keep, mshape, dev)?.to_dtype(x.dtype())?;
                let fill = ((keep.ones_like()? - &keep)? * value as f64)?;
                y = y.broadcast_mul(&keep)?.broadcast_add(&fill)?;
            }
        }
        Ok(y)
    }
}

impl LayerOp for Resize {
    fn base_name(&self) -> &'static str {
        "resize"
    }

    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape> {
        let s = ctx.single_of_rank(3, "resize")?;
        let (c, _, _) = s.chw().expect("rank checked");
        if self.size.contains(&0) {
            return Err(Error::shape(
                ctx.node,
                format!(
                    "output size {:?} of input '{}' {s} is empty",
                    self.size, ctx.input_names[0]
                ),
            ));
        }
        if self.scales.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::invalid(
                ctx.node,
                format!("scales {:?} must be positive and finite", self.scales),
            ));
        }
        Ok(Shape::new([c, self.size[0], self.size[1]]))
    }

    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let x = &inputs[0];
        // Interpolate in f32 at least: weights are exact to f32 either way.
        let dtype = x.dtype();
        let x = if dtype == DType::F64 {
            x.clone()
        } else {
            x.to_dtype(DType::F32).at_node(ctx.node)?
        };
        let (_, _, h, w) = x.dims4().at_node(ctx.node)?;
        let mut y = x;
        let identity = |axis: usize, len: usize| {
            self.size[axis] == len
                && self.scales[axis] == 1.0
                && !matches!(self.coordinates, CoordinateMode::TfCropAndResize { .. })
        };
        if !identity(0, h) {
            y = self.resample_axis(&y, 2).at_node(ctx.node)?;
        }
        if !identity(1, w) {
            y = self.resample_axis(&y, 3).at_node(ctx.node)?;
        }
        y.to_dtype(dtype).at_node(ctx.node)
    }
}
