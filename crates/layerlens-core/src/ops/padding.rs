//! Spatial padding rules shared by convolution and pooling.

use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How a convolution or pooling window treats the borders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// No padding (Keras `"valid"`, PyTorch `padding=0`).
    #[default]
    Valid,
    /// Output size `ceil(in / stride)`, extra padding at the bottom/right
    /// (Keras/TensorFlow `"same"`, which PyTorch's `"same"` matches for stride 1).
    Same,
    /// Explicit `[top, bottom, left, right]` (PyTorch `padding=p` is `[p, p, p, p]`).
    Explicit([usize; 4]),
}

impl Padding {
    /// Symmetric explicit padding of `p` on every side.
    pub fn symmetric(p: usize) -> Self {
        Padding::Explicit([p, p, p, p])
    }

    /// `[top, bottom, left, right]` for an input of `(h, w)`.
    pub fn resolve(
        &self,
        (h, w): (usize, usize),
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> [usize; 4] {
        match *self {
            Padding::Valid => [0; 4],
            Padding::Explicit(p) => p,
            Padding::Same => {
                // Saturating: geometry from a file may be absurd; the op's
                // own checks then refuse it with a message.
                let total = |n: usize, k: usize, s: usize, d: usize| {
                    let s = s.max(1);
                    let out = n.div_ceil(s).max(1);
                    let eff = k.saturating_sub(1).saturating_mul(d).saturating_add(1);
                    ((out - 1).saturating_mul(s).saturating_add(eff)).saturating_sub(n)
                };
                let th = total(h, kernel[0], stride[0], dilation[0]);
                let tw = total(w, kernel[1], stride[1], dilation[1]);
                [th / 2, th - th / 2, tw / 2, tw - tw / 2]
            }
        }
    }
}

/// Output spatial size of a window op, or an error naming the node when the
/// window does not fit.
pub(crate) fn window_output(
    node: &str,
    what: &str,
    (h, w): (usize, usize),
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
) -> Result<(usize, usize)> {
    let too_big = || {
        Error::invalid(node, format!("{what} geometry overflows: kernel {kernel:?}, dilation {dilation:?}, pads {pads:?}"))
    };
    let eff = |k: usize, d: usize| {
        k.checked_sub(1)
            .and_then(|k| k.checked_mul(d))
            .and_then(|e| e.checked_add(1))
    };
    let padded = |n: usize, a: usize, b: usize| n.checked_add(a).and_then(|n| n.checked_add(b));
    let eff_h = eff(kernel[0], dilation[0]).ok_or_else(too_big)?;
    let eff_w = eff(kernel[1], dilation[1]).ok_or_else(too_big)?;
    let ph = padded(h, pads[0], pads[1]).ok_or_else(too_big)?;
    let pw = padded(w, pads[2], pads[3]).ok_or_else(too_big)?;
    if stride.contains(&0) {
        return Err(Error::invalid(
            node,
            format!("{what} stride {stride:?} must be positive"),
        ));
    }
    if eff_h > ph || eff_w > pw {
        return Err(Error::shape(
            node,
            format!(
                "{what} window {eff_h}x{eff_w} is larger than the padded input {ph}x{pw} (input {h}x{w}, kernel {}x{}, dilation {}x{}, pads [top, bottom, left, right] {pads:?}): no output position fits",
                kernel[0], kernel[1], dilation[0], dilation[1]
            ),
        ));
    }
    Ok(((ph - eff_h) / stride[0] + 1, (pw - eff_w) / stride[1] + 1))
}

/// Pads the last two dims of an NCHW tensor with a constant.
pub(crate) fn pad_hw(x: &Tensor, pads: [usize; 4], value: f32) -> candle_core::Result<Tensor> {
    if pads == [0; 4] {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x
            .pad_with_zeros(2, pads[0], pads[1])?
            .pad_with_zeros(3, pads[2], pads[3]);
    }
    let pad_dim = |x: &Tensor, dim: usize, before: usize, after: usize| {
        if before == 0 && after == 0 {
            return Ok(x.clone());
        }
        let mut parts = Vec::with_capacity(3);
        let mut dims = x.dims().to_vec();
        if before > 0 {
            dims[dim] = before;
            parts.push(Tensor::full(value, dims.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        parts.push(x.clone());
        if after > 0 {
            dims[dim] = after;
            parts.push(Tensor::full(value, dims.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let x = pad_dim(x, 2, pads[0], pads[1])?;
    pad_dim(&x, 3, pads[2], pads[3])
}

pub(crate) fn check_positive(node: &str, what: &str, v: [usize; 2]) -> Result<()> {
    if v[0] == 0 || v[1] == 0 {
        return Err(Error::invalid(
            node,
            format!(
                "{what} must be at least 1 in each dimension, got {}x{}",
                v[0], v[1]
            ),
        ));
    }
    Ok(())
}
