//! # layerlens-keras
//!
//! Keras models into the layerlens graph IR, with the **Keras layer names** as
//! node names (so `--layers block3_conv3` works): `.keras` zips (or their
//! unzipped directory), legacy full-model `.h5` (Keras 2 and 3), told apart by
//! content, not extension. Weights are converted from Keras' layouts (HWIO
//! kernels, channel-last Flatten order, NHWC axes); [`layout`] has the same
//! conversions for users. Lambda layers are never executed: they import as
//! unbound nodes (see [`ImportOptions::bind`]). Weights in `model.weights.npz`
//! (pickled object arrays) are refused.

#![warn(missing_docs)]

mod h5;
mod import;
mod into_model;
pub mod lambda;
pub mod layout;
mod source;

pub use import::{activation_by_name, ImportOptions, SUPPORTED_LAYERS};
pub use into_model::state_dict_for;
pub use source::{detect, KerasFormat};

use layerlens_core::{Error, Model, Result};
use std::path::Path;

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Imports a Keras model file (`.keras` zip or directory, legacy `.h5`).
pub fn import(path: impl AsRef<Path>) -> Result<Model> {
    import_with(path, &ImportOptions::default())
}

/// Imports a Keras model file with options (Lambda bindings).
pub fn import_with(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<Model> {
    let path = path.as_ref();
    build_named(source::read(path), path, opts)
}

fn build_named(
    src: std::result::Result<source::Source, String>,
    path: &Path,
    opts: &ImportOptions,
) -> Result<Model> {
    let src = src.map_err(|m| format_err(path, m))?;
    import::build(&src, opts).map_err(|e| match e {
        Error::Format { .. } => e,
        other => format_err(path, other.to_string()),
    })
}

/// Imports a `.keras` zip or a legacy full-model `.h5` held in memory; `name`
/// is the file name errors mention. Detected by content, like [`import`].
pub fn import_bytes(bytes: &[u8], name: &str, opts: &ImportOptions) -> Result<Model> {
    build_named(source::read_bytes(bytes.to_vec()), Path::new(name), opts)
}

/// Imports a model from its Keras config (`config.json` of a `.keras`, or
/// `model.to_json()`) and a weights-only HDF5 file (`.weights.h5`, or legacy
/// `save_weights` output).
pub fn import_config_and_weights(
    config: impl AsRef<Path>,
    weights: impl AsRef<Path>,
    opts: &ImportOptions,
) -> Result<Model> {
    let (cp, wp) = (config.as_ref(), weights.as_ref());
    let text = std::fs::read(cp).map_err(|e| format_err(cp, e.to_string()))?;
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format_err(cp, format!("not JSON: {e}")))?;
    let weights = source::read_weights_only(wp).map_err(|m| format_err(wp, m))?;
    let src = source::Source {
        config,
        keras_version: None,
        weights,
    };
    import::build(&src, opts).map_err(|e| format_err(wp, e.to_string()))
}
