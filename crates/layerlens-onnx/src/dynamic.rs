//! Models whose input sizes come from the input: an ONNX file decoded once
//! and imported at each input shape it is used with, the imports kept in a
//! small least-recently-used cache and sharing one set of weights and hooks.
//!
//! ```no_run
//! use layerlens_onnx::{OnnxModel, ShapeCache};
//! let cache = ShapeCache::new(OnnxModel::open("detector.onnx")?, 4);
//! // A (1, 3, 480, 640) image and a (1, 3, 320, 320) one: two imports, one decode.
//! # let (a, b) = (candle_core::Tensor::zeros((1, 3, 480, 640), candle_core::DType::F32, &candle_core::Device::Cpu)?, candle_core::Tensor::zeros((1, 3, 320, 320), candle_core::DType::F32, &candle_core::Device::Cpu)?);
//! let fa = cache.model_for_inputs(&[a.clone()])?.extract(&a, &["backbone*"])?;
//! let fb = cache.model_for_inputs(&[b.clone()])?.extract(&b, &["backbone*"])?;
//! # Ok::<(), layerlens_core::Error>(())
//! ```

use crate::import::{build, Decoded, GraphInput, ImportOptions};
use candle_core::Tensor;
use layerlens_core::{Error, Model, Result};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// An ONNX file decoded once — protobuf parsed, opset checked, every
/// initializer (external data included) read — to be imported at any input
/// shape with [`OnnxModel::import`].
pub struct OnnxModel {
    decoded: Decoded,
    inputs: Vec<GraphInput>,
}

impl OnnxModel {
    /// Reads and decodes an ONNX file; external data resolves against its directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_bytes(&bytes, base, &path.display().to_string())
    }

    /// Decodes ONNX bytes; `base` is where external data files are looked up
    /// and `what` names the source in errors.
    pub fn from_bytes(bytes: &[u8], base: &Path, what: &str) -> Result<Self> {
        let decoded = Decoded::new(bytes, base, what)?;
        let inputs = decoded.inputs();
        Ok(OnnxModel { decoded, inputs })
    }

    /// The graph inputs (initializers excluded) with their declared dimensions,
    /// `dim_param` names included.
    pub fn inputs(&self) -> &[GraphInput] {
        &self.inputs
    }

    /// Whether some input leaves a non-batch size to the caller.
    pub fn is_dynamic(&self) -> bool {
        self.inputs.iter().any(GraphInput::is_symbolic)
    }

    /// Imports the model at the sizes `opts` give (or the file fixes).
    pub fn import(&self, opts: &ImportOptions) -> Result<Model> {
        build(&self.decoded, opts, None)
    }

    /// [`OnnxModel::import`], the result sharing `with`'s trainable parameters,
    /// buffers and hooks (`with` must be an import of this same file).
    pub fn import_sharing(&self, opts: &ImportOptions, with: &Model) -> Result<Model> {
        build(&self.decoded, opts, Some(with))
    }
}

/// Imports of one [`OnnxModel`] by per-sample input shapes, the `capacity`
/// most recently used kept. They share one set of weights (training one
/// trains all, and an evicted shape comes back with the current weights) and
/// one hook table, so hooks, layer names, globs and Grad-CAM targets carry
/// from one input size to the next; each keeps its own cached plans.
pub struct ShapeCache {
    source: OnnxModel,
    capacity: usize,
    /// Most recently used last.
    entries: Mutex<Vec<(Vec<Vec<usize>>, Model)>>,
    imports: AtomicUsize,
}

impl ShapeCache {
    /// A cache over `source` keeping up to `capacity` imports (at least one).
    pub fn new(source: OnnxModel, capacity: usize) -> Self {
        ShapeCache {
            source,
            capacity: capacity.max(1),
            entries: Mutex::new(Vec::new()),
            imports: AtomicUsize::new(0),
        }
    }

    /// The decoded file.
    pub fn source(&self) -> &OnnxModel {
        &self.source
    }

    /// How many imports were made so far (one per shape not found in the cache).
    pub fn imports(&self) -> usize {
        self.imports.load(Ordering::Relaxed)
    }

    /// The model for these per-sample input shapes (no batch axis; one per
    /// graph input, in the file's order), imported on first use.
    pub fn model_for(&self, shapes: &[Vec<usize>]) -> Result<Model> {
        let inputs = self.source.inputs();
        if shapes.len() != inputs.len() {
            return Err(Error::Format {
                path: self.source.decoded.what.clone(),
                message: format!(
                    "{} input shape(s) given for a model with {} input(s) ({})",
                    shapes.len(),
                    inputs.len(),
                    inputs
                        .iter()
                        .map(|i| format!("'{}' {}", i.name, i.dims_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = entries.iter().position(|(k, _)| k.as_slice() == shapes) {
            let hit = entries.remove(i);
            let model = hit.1.clone();
            entries.push(hit);
            return Ok(model);
        }
        let opts = ImportOptions {
            input_shapes: inputs
                .iter()
                .zip(shapes)
                .map(|(i, s)| (i.name.clone(), s.clone()))
                .collect(),
            ..Default::default()
        };
        let model = match entries.last() {
            Some((_, newest)) => self.source.import_sharing(&opts, newest)?,
            None => self.source.import(&opts)?,
        };
        self.imports.fetch_add(1, Ordering::Relaxed);
        entries.push((shapes.to_vec(), model.clone()));
        if entries.len() > self.capacity {
            entries.remove(0);
        }
        Ok(model)
    }

    /// The model at the sizes `opts` give (`--input-shape`, `--dim`), imported
    /// and cached like [`ShapeCache::model_for`]'s, under the input shapes it
    /// resolves to.
    pub fn model_with(&self, opts: &ImportOptions) -> Result<Model> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let model = match entries.last() {
            Some((_, newest)) => self.source.import_sharing(opts, newest)?,
            None => self.source.import(opts)?,
        };
        let g = model.graph();
        let shapes: Vec<Vec<usize>> = g
            .inputs()
            .iter()
            .map(|&id| g.node(id).shape.dims().to_vec())
            .collect();
        if let Some(i) = entries.iter().position(|(k, _)| *k == shapes) {
            // Already there: keep that one (it may hold plans) and drop this import.
            let hit = entries.remove(i);
            let cached = hit.1.clone();
            entries.push(hit);
            return Ok(cached);
        }
        self.imports.fetch_add(1, Ordering::Relaxed);
        entries.push((shapes, model.clone()));
        if entries.len() > self.capacity {
            entries.remove(0);
        }
        Ok(model)
    }

    /// [`ShapeCache::model_for`] with the shapes of batched input tensors
    /// (their dimensions after the first).
    pub fn model_for_inputs(&self, inputs: &[Tensor]) -> Result<Model> {
        let shapes: Vec<Vec<usize>> = inputs
            .iter()
            .map(|t| t.dims().get(1..).unwrap_or(&[]).to_vec())
            .collect();
        self.model_for(&shapes)
    }
}
