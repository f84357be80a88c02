//! Public conversions between Keras' layouts and layerlens' (see `docs/layout.md`):
//! NHWC activations, HWIO kernels, Keras' channel-last Flatten order.

use candle_core::{Result, Tensor};

/// A Keras `(N, H, W, C)` activation as layerlens' `(N, C, H, W)`; other ranks unchanged.
pub fn nhwc_to_nchw(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 {
        t.permute((0, 3, 1, 2))?.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// A layerlens `(N, C, H, W)` activation as Keras' `(N, H, W, C)`; other ranks unchanged.
pub fn nchw_to_nhwc(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 {
        t.permute((0, 2, 3, 1))?.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// A Keras Conv2D kernel `(kh, kw, in, out)` (HWIO) as OIHW `[out, in, kh, kw]`.
pub fn hwio_to_oihw(k: &Tensor) -> Result<Tensor> {
    k.permute((3, 2, 0, 1))?.contiguous()
}

/// A Keras Conv2DTranspose kernel `(kh, kw, out, in)` as layerlens' (and
/// PyTorch's) transposed-convolution kernel `[in, out, kh, kw]`.
pub fn conv_transpose_kernel(k: &Tensor) -> Result<Tensor> {
    k.permute((3, 2, 0, 1))?.contiguous()
}

/// A Keras DepthwiseConv2D kernel `(kh, kw, in, multiplier)` as the OIHW kernel
/// `[in * multiplier, 1, kh, kw]` of a convolution with `groups = in`.
pub fn depthwise_to_oihw(k: &Tensor) -> Result<Tensor> {
    let (kh, kw, c, m) = k.dims4()?;
    k.permute((2, 3, 0, 1))?
        .contiguous()?
        .reshape((c * m, 1, kh, kw))
}

/// A Keras Dense kernel `(in, units)` as layerlens' `[units, in]`.
pub fn dense_kernel(k: &Tensor) -> Result<Tensor> {
    k.t()?.contiguous()
}

/// A Keras Dense kernel `(H*W*C, units)` that follows a Flatten of an `(H, W, C)`
/// map, as the `[units, C*H*W]` kernel for layerlens' Flatten of the same map as
/// `(C, H, W)`: the rows are reordered from Keras' channel-last order.
pub fn dense_kernel_after_flatten(k: &Tensor, (c, h, w): (usize, usize, usize)) -> Result<Tensor> {
    let units = k.dim(1)?;
    k.reshape((h, w, c, units))?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((c * h * w, units))?
        .t()?
        .contiguous()
}
