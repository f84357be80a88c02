//! Reading a Keras file: detection by content, the model config, the Keras
//! version and the weights, per layer, in Keras' own layouts.

use crate::h5::{H5Read, PureH5, SIGNATURE};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// One weight array as stored by Keras: dims and row-major values.
pub(crate) type Array = (Vec<usize>, Vec<f32>);

/// A layer's stored variables, in the layer's own order (kernel, bias; gamma,
/// beta, moving mean, moving variance; ...), and a nested model's layers.
#[derive(Default, Debug, Clone)]
pub(crate) struct LayerWeights {
    pub vars: Vec<Array>,
    pub inner: HashMap<String, LayerWeights>,
}

/// What a Keras file holds.
pub(crate) struct Source {
    /// The model config (`config.json`, or the legacy `model_config` attribute).
    pub config: serde_json::Value,
    /// `keras_version` as recorded in the file ("2.0.5", "3.15.1"), if any.
    pub keras_version: Option<String>,
    /// Weights by top-level layer name.
    pub weights: HashMap<String, LayerWeights>,
}

/// The kinds of Keras file, told apart by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerasFormat {
    /// A Keras 3 `.keras` zip (or its unzipped directory).
    Keras,
    /// A legacy full-model HDF5 file (`model.save("m.h5")`, Keras 2).
    LegacyH5,
    /// Weights only, in HDF5: Keras 3 `.weights.h5` or legacy `save_weights`.
    WeightsH5,
}

/// Tells what Keras file `path` is by its content (zip with `config.json`, HDF5
/// with or without a `model_config`), or `None` when it is none.
pub fn detect(path: &Path) -> Option<KerasFormat> {
    if path.is_dir() {
        return (path.join("config.json").is_file() && path.join("model.weights.h5").is_file())
            .then_some(KerasFormat::Keras);
    }
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).ok()?;
    f.read_exact(&mut head).ok()?;
    if head.starts_with(b"PK\x03\x04") {
        let z = zip::ZipArchive::new(std::fs::File::open(path).ok()?).ok()?;
        let has = |n: &str| z.file_names().any(|f| f.is_ok_and(|f| f == n));
        return has("config.json").then_some(KerasFormat::Keras);
    }
    if &head == SIGNATURE {
        let h5 = PureH5::from_bytes(std::fs::read(path).ok()?).ok()?;
        return Some(if h5.attr_string("", "model_config").ok()?.is_some() {
            KerasFormat::LegacyH5
        } else {
            KerasFormat::WeightsH5
        });
    }
    None
}

fn member<R: Read + std::io::Seek>(
    z: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    let mut f = match z.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("zip member '{name}': {e}")),
    };
    // Never more than the member declares: the buffer grows with the data
    // actually inflated, so a lying header cannot make it allocate ahead.
    let declared = f.size();
    let mut v = Vec::new();
    (&mut f)
        .take(declared)
        .read_to_end(&mut v)
        .map_err(|e| format!("zip member '{name}' is unreadable (truncated?): {e}"))?;
    Ok(Some(v))
}

fn parse_json(bytes: &[u8], what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

fn version_of(meta: &serde_json::Value) -> Option<String> {
    meta.get("keras_version")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

const NPZ: &str = "weights in model.weights.npz (pickled NumPy object arrays, which can run code when read) are refused: re-save the model with weights in HDF5 (the default .keras format)";

/// Reads a `.keras` zip or directory, or a legacy full-model `.h5`.
pub(crate) fn read(path: &Path) -> Result<Source, String> {
    if path.is_dir() {
        let rd = |n: &str| std::fs::read(path.join(n)).map_err(|e| format!("{n}: {e}"));
        if path.join("model.weights.npz").exists() {
            return Err(NPZ.into());
        }
        let config = parse_json(&rd("config.json")?, "config.json")?;
        let keras_version = match rd("metadata.json") {
            Ok(m) => version_of(&parse_json(&m, "metadata.json")?),
            Err(_) => None,
        };
        let h5 = PureH5::from_bytes(rd("model.weights.h5")?)
            .map_err(|e| format!("model.weights.h5: {e}"))?;
        return Ok(Source {
            config,
            keras_version,
            weights: keras3_weights(&h5)?,
        });
    }
    read_bytes(std::fs::read(path).map_err(|e| e.to_string())?)
}

/// Reads a `.keras` zip or a legacy full-model `.h5` from its bytes.
pub(crate) fn read_bytes(bytes: Vec<u8>) -> Result<Source, String> {
    if bytes.starts_with(b"PK\x03\x04") {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.as_slice()))
            .map_err(|e| format!("not a readable .keras zip (truncated or corrupt?): {e}"))?;
        if z.file_names()
            .any(|n| n.is_ok_and(|n| n == "model.weights.npz"))
        {
            return Err(NPZ.into());
        }
        let config = member(&mut z, "config.json")?
            .ok_or("a zip without config.json is not a .keras file")?;
        let config = parse_json(&config, "config.json")?;
        let keras_version = match member(&mut z, "metadata.json")? {
            Some(m) => version_of(&parse_json(&m, "metadata.json")?),
            None => None,
        };
        let w =
            member(&mut z, "model.weights.h5")?.ok_or("the .keras zip has no model.weights.h5")?;
        let h5 = PureH5::from_bytes(w).map_err(|e| format!("model.weights.h5: {e}"))?;
        return Ok(Source {
            config,
            keras_version,
            weights: keras3_weights(&h5)?,
        });
    }
    if bytes.starts_with(SIGNATURE) {
        let h5 = PureH5::from_bytes(bytes)?;
        let Some(cfg) = h5.attr_string("", "model_config")? else {
            return Err("an HDF5 file of weights only (no model_config): import it with its config (layerlens_keras::import_config_and_weights)".into());
        };
        let config = parse_json(cfg.as_bytes(), "model_config")?;
        let keras_version = h5.attr_string("", "keras_version")?;
        let root = if h5.is_group("model_weights") {
            "model_weights"
        } else {
            ""
        };
        return Ok(Source {
            config,
            keras_version,
            weights: legacy_weights(&h5, root)?,
        });
    }
    Err("not a Keras file (neither a .keras zip nor HDF5)".into())
}

/// Reads a weights-only HDF5 file (Keras 3 `.weights.h5` or legacy layout).
pub(crate) fn read_weights_only(path: &Path) -> Result<HashMap<String, LayerWeights>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let h5 = PureH5::from_bytes(bytes)?;
    if h5.is_group("layers") {
        keras3_weights(&h5)
    } else if h5.is_group("model_weights") {
        legacy_weights(&h5, "model_weights")
    } else {
        legacy_weights(&h5, "")
    }
}

fn numeric_sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| n.parse::<usize>().unwrap_or(usize::MAX));
    names
}

/// Keras 3: `layers/<snake_case class>[_n]/vars/<i>`, with the layer name in
/// the `name` attribute of `vars` (Keras 3.6+); nested models recurse.
fn keras3_weights(h5: &dyn H5Read) -> Result<HashMap<String, LayerWeights>, String> {
    fn walk(h5: &dyn H5Read, base: &str) -> Result<HashMap<String, LayerWeights>, String> {
        let mut out = HashMap::new();
        for g in h5.groups(base)? {
            let path = format!("{base}/{g}");
            let vars_path = format!("{path}/vars");
            let name = if h5.is_group(&vars_path) {
                h5.attr_string(&vars_path, "name")?
            } else {
                None
            };
            let Some(name) = name else {
                return Err(format!(
                    "weights group '/{path}' has no layer name (files from Keras before 3.6 are not supported: re-save with a newer Keras)"
                ));
            };
            let mut lw = LayerWeights::default();
            if h5.is_group(&vars_path) {
                for d in numeric_sorted(h5.datasets(&vars_path)?) {
                    lw.vars.push(h5.read_f32(&format!("{vars_path}/{d}"))?);
                }
            }
            let inner = format!("{path}/layers");
            if h5.is_group(&inner) {
                lw.inner = walk(h5, &inner)?;
            }
            out.insert(name, lw);
        }
        Ok(out)
    }
    walk(h5, "layers")
}

/// Legacy: `layer_names` lists the layers; each layer group's `weight_names`
/// lists its weights in order (names may differ from the layer's).
fn legacy_weights(h5: &dyn H5Read, root: &str) -> Result<HashMap<String, LayerWeights>, String> {
    let names = h5.attr_strings(root, "layer_names")?.ok_or_else(|| {
        format!("no 'layer_names' attribute on '/{root}': not a Keras weights file")
    })?;
    let mut out = HashMap::new();
    for name in names {
        let path = if root.is_empty() {
            name.clone()
        } else {
            format!("{root}/{name}")
        };
        // An empty `weight_names` is stored as an empty float array, not strings.
        let wn = h5
            .attr_strings(&path, "weight_names")
            .unwrap_or(None)
            .unwrap_or_default();
        let mut lw = LayerWeights::default();
        for w in wn {
            lw.vars.push(h5.read_f32(&format!("{path}/{w}"))?);
        }
        out.insert(name, lw);
    }
    Ok(out)
}
