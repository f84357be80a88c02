//! # layerlens-onnx
//!
//! Imports an ONNX model into the layerlens graph IR, so that every node output
//! of a CNN exported from PyTorch, Paddle or TensorFlow can be tapped, hooked,
//! differentiated and visualised like any layerlens model.
//!
//! Each ONNX node becomes one layerlens node named after the ONNX node (or its
//! first output when unnamed); every output tensor name is an alias of it, so
//! `extract` accepts either. `Identity` and `Dropout` become aliases of their
//! input. Shape arithmetic (`Shape`, `Gather`, `Slice`, `Concat`, `Cast`,
//! `Unsqueeze`, `Constant`, ...) on values known at import is folded away.
//! Weights come from initializers, `Constant` nodes and external data files.
//!
//! ```no_run
//! let model = layerlens_onnx::import("resnet18.onnx")?;
//! println!("{}", model.summary());
//! # Ok::<(), layerlens_core::Error>(())
//! ```

mod dynamic;
mod fold;
mod import;
pub mod proto;
mod tensor;

pub use dynamic::{OnnxModel, ShapeCache};
pub use import::{
    graph_inputs, import, import_bytes, import_with, GraphInput, ImportOptions, InputDim,
    SUPPORTED_OPS,
};
/// prost's decoding trait, to read [`proto`] messages directly.
pub use prost::Message;
pub use tensor::tensor_from_proto;
