//! The CPU kernels of layerlens: f32 NCHW slices in, f32 slices out, no tensor
//! type and no autograd (those live in `layerlens-core`, which wraps these as
//! candle custom ops).
//!
//! - [`isa`]: the instruction-set path (AVX-512, AVX2 + FMA, portable), detected
//!   at run time, lowered by `LAYERLENS_ISA` or per thread by [`isa::with_isa`];
//!   [`multiversion!`] compiles a loop once per path.
//! - [`gemm`]: the `gemm` crate's f32 GEMM on the chosen path (backward passes).
//! - [`packed`]: layerlens' own packed GEMM for the convolution forward (kernel
//!   packed once per call, im2col written straight into the micro-kernel's panels).
//! - [`conv`]: convolution forward (fused epilogue: bias, folded batch norm,
//!   residual, activation) and both gradients.
//! - [`winograd`]: Winograd F(2, 3) for 3×3 stride-1 convolutions, where it pays.
//! - [`pool`]: max / average pooling, forward and backward.
//! - [`batch_norm`]: training-mode batch normalisation, forward and backward.
//! - [`elementwise`]: the small per-element passes of training (activation
//!   masks, per-channel sums).
//!
//! Every kernel asserts its slices' lengths against its geometry; geometries are
//! validated by the callers (`validate` / `out_hw`) before any slice is built.

pub mod isa;

pub mod batch_norm;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod packed;
pub mod pool;
mod scratch;
#[cfg(test)]
mod testutil;
pub mod winograd;

pub use isa::{with_isa, Isa};
