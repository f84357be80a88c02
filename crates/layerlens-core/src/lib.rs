//! # layerlens-core
//!
//! The foundation of layerlens: a graph IR for convolutional networks in which
//! every intermediate node is a first-class output.
//!
//! - [`ir`]: named nodes, ops and inferred shapes; parameters live apart in a
//!   [`ParamStore`] under `layer.param` keys, like a PyTorch state dict.
//! - [`builder`]: [`Sequential`], [`Functional`], [`Block`](builder::Block)
//!   (subclass-style reusable pieces), shared layers, inlined sub-models.
//! - [`Model`]: [`extract`](Model::extract) any nodes by name or glob,
//!   [`submodel`](Model::submodel) with shared weights, forward
//!   [hooks](Model::register_forward_hook), activation
//!   [gradients](Model::gradients), [`summary`](Model::summary),
//!   [`save`](Model::save) / [`load`](Model::load).
//! - [`lambda`]: closure and registered Lambdas, built-ins (mean, l2_normalize,
//!   conv2d with another layer's kernel, ...), frozen and live weight references.
//!
//! Activations are NCHW; `docs/layout.md` maps Keras' NHWC onto it.
//!
//! ```
//! use layerlens_core::prelude::*;
//!
//! let model = Sequential::new("seed_cnn", [1, 28, 28])
//!     .add(Conv2d::new(32, 3).activation(Activation::Relu))?
//!     .add(Pool2d::max(2))?
//!     .add(Conv2d::new(64, 3).activation(Activation::Relu))?
//!     .add(Pool2d::max(2))?
//!     .add(Flatten)?
//!     .add(Dense::new(10).activation(Activation::SOFTMAX))?
//!     .build()?;
//! let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu)?;
//! let acts = model.extract(&x, &["conv2d", "conv2d_1"])?;
//! assert_eq!(acts.get("conv2d_1")?.dims(), &[4, 64, 11, 11]);
//! # Ok::<(), layerlens_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod builder;
pub mod error;
mod exec;
pub mod fsio;
pub mod hooks;
pub mod io;
pub mod ir;
pub mod kernels;
pub mod lambda;
pub mod model;
pub mod ops;
pub mod params;
pub mod plan;
pub mod select;
pub mod shape;
pub mod summary;
pub mod zoo;

pub use builder::{Functional, Sequential};
pub use error::{Error, Result};
pub use model::{Activations, Gradients, Mode, Model, RunOptions};
pub use params::ParamStore;
pub use shape::Shape;

/// The tensor engine layerlens runs on.
pub use candle_core;

/// Everything needed to build and tap models.
pub mod prelude {
    pub use crate::builder::{Block, Functional, NodeRef, Sequential};
    pub use crate::lambda::{
        Closure, Conv2dRef, CustomOp, L2Normalize, LambdaRegistry, Reduce, Scale, ScaleByWeight,
        WeightRef,
    };
    pub use crate::model::{Activations, Mode, Model, RunOptions};
    pub use crate::ops::{
        Activation, Add, BatchNorm, Concat, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool, Mul,
        Padding, Pool2d, Reshape,
    };
    pub use crate::{Error, Result, Shape};
    pub use candle_core::{DType, Device, Tensor};
}
