//! Built-in layers, one file each: the layer's arguments, its shape inference,
//! its parameters and its forward pass live together.
//!
//! All activations are NCHW. See `docs/layout.md` for how Keras' NHWC
//! activations, HWIO kernels and Flatten order map onto this.

pub mod activation;
pub mod batch_norm;
pub mod broadcast;
pub mod conv2d;
pub mod crop;
pub mod dense;
pub mod dropout;
pub mod elementwise;
pub mod layer_norm;
pub mod matmul;
pub mod padding;
pub mod pool;
pub mod prelu;
pub mod resample;
pub mod reshape;
pub mod resize;
pub mod slice;

pub use activation::Activation;
pub use batch_norm::BatchNorm;
pub use broadcast::{BinaryKind, ConstOperand, Elementwise, Side};
pub use conv2d::Conv2d;
pub use crop::Crop2d;
pub use dense::Dense;
pub use dropout::Dropout;
pub use elementwise::{Add, Concat, Mul};
pub use layer_norm::LayerNorm;
pub use matmul::{BatchConstant, MatMul};
pub use padding::Padding;
pub use pool::{GlobalAvgPool, Pool2d, PoolKind};
pub use prelu::PRelu;
pub use resample::{ConvTranspose2d, Pad2d, PadMode, Permute, Upsample, UpsampleMode};
pub use reshape::{Flatten, Reshape};
pub use resize::{CoordinateMode, NearestRounding, Resize, ResizeKernel};
pub use slice::Slice;

use crate::error::Result;
use crate::params::ParamSpec;
use crate::shape::Shape;
use candle_core::Tensor;

/// What a layer sees of the graph while its shape is inferred: the node being
/// built and the names and shapes of its inputs.
#[derive(Debug, Clone, Copy)]
pub struct InferCtx<'a> {
    /// The node being built.
    pub node: &'a str,
    /// Input node names, in order.
    pub input_names: &'a [String],
    /// Input shapes, in order.
    pub input_shapes: &'a [Shape],
}

impl InferCtx<'_> {
    /// Checks the number of inputs.
    pub fn expect_inputs(&self, n: usize) -> Result<()> {
        if self.input_shapes.len() != n {
            return Err(crate::Error::invalid(
                self.node,
                format!("expects {n} input(s), got {}", self.input_shapes.len()),
            ));
        }
        Ok(())
    }

    /// The single input's shape, requiring a given per-sample rank.
    pub fn single_of_rank(&self, rank: usize, what: &str) -> Result<&Shape> {
        self.expect_inputs(1)?;
        let s = &self.input_shapes[0];
        if s.rank() != rank {
            return Err(crate::Error::shape(
                self.node,
                format!(
                    "{what} expects a rank-{} input (N{}), but '{}' has shape {}",
                    rank + 1,
                    if rank == 3 { ", C, H, W" } else { ", ..." },
                    self.input_names[0],
                    s
                ),
            ));
        }
        Ok(s)
    }
}

/// The tensors a layer runs with: its own parameters (by local name, e.g.
/// `"weight"`) and whether it runs in training mode.
pub struct ForwardCtx<'a> {
    /// The node being run.
    pub node: &'a str,
    /// Training mode: batch-norm uses batch statistics, dropout drops.
    pub train: bool,
    pub(crate) params: &'a dyn Fn(&str) -> Result<Tensor>,
    pub(crate) update_buffer: &'a dyn Fn(&str, &Tensor) -> Result<()>,
}

impl ForwardCtx<'_> {
    /// The parameter `local` of this node's layer (e.g. `"weight"`).
    pub fn param(&self, local: &str) -> Result<Tensor> {
        (self.params)(local)
    }

    /// Overwrites a non-trainable buffer (batch-norm running statistics).
    pub fn set_buffer(&self, local: &str, value: &Tensor) -> Result<()> {
        (self.update_buffer)(local, value)
    }
}

/// The contract every built-in layer fulfils.
pub trait LayerOp {
    /// The Keras-style base name used for automatic node names (`conv2d`, `conv2d_1`, ...).
    fn base_name(&self) -> &'static str;
    /// Checks inputs, resolves lazily known sizes (input channels) and returns the output shape.
    fn infer(&mut self, ctx: &InferCtx) -> Result<Shape>;
    /// The parameters this layer owns, by local name.
    fn param_specs(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Runs the layer.
    fn forward(&self, inputs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor>;
    /// Multiply-accumulates for one sample.
    fn macs(&self, _inputs: &[Shape], _output: &Shape) -> u64 {
        0
    }
}
