//! # layerlens
//!
//! The library users depend on. It re-exports the core (graph IR, builders,
//! extraction, hooks, Lambdas, gradients, save/load) and adds datasets and the
//! model zoo; importers, training and visualisation join it as they land.
//!
//! ```
//! use layerlens::prelude::*;
//!
//! // Build the seed CNN, tap two layers, and grow a Lambda from one of them.
//! let model = layerlens::zoo::seed_cnn(true)?;
//! let x = Tensor::rand(0f32, 1f32, (2, 1, 28, 28), &Device::Cpu)?;
//! let acts = model.extract(&x, &["conv2d", "conv2d_1"])?;
//! assert_eq!(acts.get("conv2d")?.dims(), &[2, 32, 26, 26]);
//!
//! let mut g = Functional::extend(&model);
//! let conv = g.get("conv2d")?;
//! let mean = g.lambda(Reduce::mean([2, 3]), &[conv], &[])?; // spatial mean per channel
//! let means = g.build(&[mean])?.predict(&x)?;
//! assert_eq!(means.dims(), &[2, 32]);
//! # Ok::<(), layerlens::Error>(())
//! ```

pub mod extract;
pub mod hub;
mod nonfinite;
pub mod npy;
pub mod preprocess;
mod pth;
pub mod spec;
pub mod weights;
pub mod zoo;

pub use layerlens_keras as keras;
pub use layerlens_onnx as onnx;
pub use layerlens_train as train;
pub use layerlens_train::data;
pub use layerlens_viz as viz;

pub use layerlens_core::*;

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
