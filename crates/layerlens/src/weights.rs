//! Loading PyTorch weights: state dicts from `.pth` / `.pt` (zip + pickle, or
//! the legacy format, read without Python by layerlens' own bounded pickle
//! reader, which executes nothing and refuses every global a state dict does
//! not need; see docs/reliability.md) and from `.safetensors`, matched to a
//! model's parameters by key.

use layerlens_core::candle_core::{Device, Tensor};
use layerlens_core::{Error, Model, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub use crate::pth::{ALLOWED_GLOBALS, MAX_DEPTH, OPCODES};

/// Reads a state dict: `.safetensors`, or a PyTorch `.pth` / `.pt` / `.bin` /
/// `.ckpt` file (zip format or legacy format, told apart by their first bytes).
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let bad = |m: String| Error::Format {
        path: path.display().to_string(),
        message: m,
    };
    if !path.exists() {
        return Err(bad("no such file".into()));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "safetensors" => Ok(
            layerlens_core::candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
                .into_iter()
                .collect(),
        ),
        "pth" | "pt" | "bin" | "ckpt" => {
            let io = |source| Error::Io {
                path: path.display().to_string(),
                source,
            };
            let f = std::fs::File::open(path).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            let pairs = crate::pth::read(f, len).map_err(bad)?;
            Ok(pairs.into_iter().collect())
        }
        other => Err(bad(format!(
            "unknown weights format '.{other}' (use .pth, .pt, .safetensors or a Keras .h5)"
        ))),
    }
}

/// Reads a PyTorch state dict (zip or legacy format) from bytes in memory;
/// `what` names the source in errors. Malformed or hostile bytes give an
/// [`Error::Format`], never a panic, and nothing in them is executed.
pub fn read_pth_bytes(bytes: &[u8], what: &str) -> Result<BTreeMap<String, Tensor>> {
    let pairs =
        crate::pth::read(std::io::Cursor::new(bytes), bytes.len() as u64).map_err(|message| {
            Error::Format {
                path: what.to_string(),
                message,
            }
        })?;
    Ok(pairs.into_iter().collect())
}

/// What [`load_state_dict`] matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters loaded.
    pub loaded: usize,
    /// State-dict keys that were skipped on purpose (`num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Model parameters the state dict lacks, left as they were (only with
    /// `strict = false`; a strict load refuses them).
    pub missing: Vec<String>,
    /// State-dict keys the model has no parameter for, not used (only with
    /// `strict = false`).
    pub unexpected: Vec<String>,
    /// Frozen Lambda snapshots (`node.frozenN`) whose source parameter was just
    /// loaded while the snapshot itself was not: they still hold the values from
    /// when the Lambda was built. [`Model::refresh_frozen`] brings them up to date;
    /// leaving them is right only when the Lambda should keep the old weights.
    pub stale_frozen: Vec<String>,
}

/// Copies a state dict into `model`'s parameters (shared storage, so sub-models
/// see it). Every model parameter must be present with the same shape and every
/// state-dict entry must be used (except `num_batches_tracked`, which layerlens
/// does not keep); otherwise nothing is changed and the error lists the missing,
/// unexpected and wrongly shaped keys, like PyTorch's `load_state_dict(strict=True)`.
pub fn load_state_dict(
    model: &Model,
    dict: &BTreeMap<String, Tensor>,
    source: &str,
) -> Result<LoadReport> {
    load_state_dict_with(model, dict, source, true)
}

/// [`load_state_dict`], or with `strict = false` like PyTorch's
/// `load_state_dict(strict=False)`: the keys both sides have are loaded, and the
/// missing and unexpected keys are returned in the [`LoadReport`] instead of
/// refused (a backbone's weights into a model with a new head). A key present
/// on both sides with different shapes is refused either way, changing nothing.
pub fn load_state_dict_with(
    model: &Model,
    dict: &BTreeMap<String, Tensor>,
    source: &str,
    strict: bool,
) -> Result<LoadReport> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut report = LoadReport::default();
    for (k, p) in model.params().iter() {
        if p.kind == layerlens_core::params::ParamKind::Constant {
            continue;
        }
        match dict.get(k) {
            None => missing.push(k.to_string()),
            Some(t) if t.dims() != p.var.dims() => wrong.push(format!(
                "{k}: file {:?}, model {:?}",
                t.dims(),
                p.var.dims()
            )),
            Some(_) => {}
        }
    }
    let mut unexpected = Vec::new();
    for k in dict.keys() {
        if k.ends_with("num_batches_tracked") {
            report.ignored.push(k.clone());
        } else if !model.params().contains(k) {
            unexpected.push(k.clone());
        }
    }
    if !strict && wrong.is_empty() {
        report.missing = missing.clone();
        report.unexpected = unexpected.clone();
        missing.clear();
        unexpected.clear();
    }
    if !(missing.is_empty() && unexpected.is_empty() && wrong.is_empty()) {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        return Err(Error::Format {
            path: source.to_string(),
            message: format!(
                "state dict does not fit model '{}': missing keys: {}; unexpected keys: {}; wrong shapes: {}",
                model.name(),
                list(&missing),
                list(&unexpected),
                list(&wrong)
            ),
        });
    }
    for (k, p) in model.params().iter() {
        if let Some(t) = dict.get(k) {
            model.params().set(k, t)?;
            report.loaded += 1;
        } else {
            debug_assert!(!strict || p.kind == layerlens_core::params::ParamKind::Constant);
        }
    }
    report.stale_frozen = model
        .frozen_snapshots()
        .into_iter()
        .filter(|(snapshot, source)| dict.contains_key(source) && !dict.contains_key(snapshot))
        .map(|(snapshot, _)| snapshot)
        .collect();
    Ok(report)
}

/// [`read_state_dict`] then [`load_state_dict`]; a Keras weights file
/// (`.weights.h5`, a legacy weights `.h5` such as Keras' VGG16 ImageNet
/// weights, or a full `.keras` / `.h5` model), told by its content, is
/// converted by layer name with [`crate::keras::state_dict_for`] first.
pub fn load_weights(model: &Model, path: impl AsRef<Path>) -> Result<LoadReport> {
    let path = path.as_ref();
    let dict = if crate::keras::detect(path).is_some() {
        crate::keras::state_dict_for(model, path)?
    } else {
        read_state_dict(path)?
    };
    load_state_dict(model, &dict, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerlens_core::candle_core::DType;

    /// A parameter's values, flattened.
    fn values(m: &Model, key: &str) -> Vec<f32> {
        m.params()
            .tensor(key)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn mismatches_list_missing_unexpected_and_wrong_shapes_and_change_nothing() {
        let m = crate::zoo::seed_cnn(false).unwrap();
        let before = values(&m, "dense.bias");
        let mut dict: BTreeMap<String, Tensor> = m
            .params()
            .iter()
            .map(|(k, p)| {
                (
                    k.to_string(),
                    p.var.as_detached_tensor().zeros_like().unwrap(),
                )
            })
            .collect();
        dict.remove("conv2d.bias");
        dict.insert(
            "conv2d_1.weight".into(),
            Tensor::zeros((64, 32, 5, 5), DType::F32, &Device::Cpu).unwrap(),
        );
        dict.insert(
            "head.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        dict.insert(
            "bn.num_batches_tracked".into(),
            Tensor::zeros((), DType::I64, &Device::Cpu).unwrap(),
        );
        let e = load_state_dict(&m, &dict, "w.pth").unwrap_err().to_string();
        assert_eq!(
            e,
            "w.pth: state dict does not fit model 'seed_cnn': missing keys: conv2d.bias; unexpected keys: head.weight; \
             wrong shapes: conv2d_1.weight: file [64, 32, 5, 5], model [64, 32, 3, 3]"
        );
        assert_eq!(values(&m, "dense.bias"), before, "nothing changed");
    }

    #[test]
    fn a_non_strict_load_fills_what_matches_and_reports_the_rest() {
        let m = crate::zoo::seed_cnn(false).unwrap();
        let before = values(&m, "dense.bias");
        // A backbone's weights: everything but the head, plus a key the model lacks.
        let mut dict: BTreeMap<String, Tensor> = m
            .params()
            .iter()
            .map(|(k, p)| (k.to_string(), (p.var.as_detached_tensor() + 1.0).unwrap()))
            .collect();
        let old_conv = values(&m, "conv2d.bias");
        dict.remove("dense.weight");
        dict.remove("dense.bias");
        dict.insert(
            "fc.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(
            load_state_dict(&m, &dict, "w.pth").is_err(),
            "strict refuses"
        );
        let r = load_state_dict_with(&m, &dict, "w.pth", false).unwrap();
        assert_eq!(r.loaded, 4);
        assert_eq!(r.missing, ["dense.bias", "dense.weight"]);
        assert_eq!(r.unexpected, ["fc.weight"]);
        let conv = values(&m, "conv2d.bias");
        assert!(
            conv.iter()
                .zip(&old_conv)
                .all(|(a, b)| (a - b - 1.0).abs() < 1e-6),
            "loaded"
        );
        let head = values(&m, "dense.bias");
        assert_eq!(head, before, "missing keys keep their values");
        // A shape mismatch is refused even when not strict, changing nothing.
        dict.insert(
            "conv2d.bias".into(),
            Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = load_state_dict_with(&m, &dict, "w.pth", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong shapes: conv2d.bias"), "{e}");
        let conv2 = values(&m, "conv2d.bias");
        assert_eq!(conv2, conv, "nothing changed");
    }

    #[test]
    fn loading_under_a_frozen_snapshot_reports_it_stale_until_refreshed() {
        use layerlens_core::lambda::{ScaleByWeight, WeightRef};
        use layerlens_core::prelude::{Dense, Functional};
        let mut g = Functional::new("m");
        let x = g.input("input", [4]).unwrap();
        let d = g.add(Dense::new(3), &[x]).unwrap();
        let lam = g
            .lambda_as(
                "scaled",
                ScaleByWeight { index: vec![0, 0] },
                &[d],
                &[WeightRef::frozen("dense.weight")],
            )
            .unwrap();
        let m = g.build(&[lam]).unwrap();
        let snapshot = values(&m, "scaled.frozen0");
        // Pretrained weights loaded after the Lambda was built.
        let dict: BTreeMap<String, Tensor> = ["dense.weight", "dense.bias"]
            .iter()
            .map(|k| {
                let t = m.params().tensor(k).unwrap();
                (k.to_string(), (t + 1.0).unwrap())
            })
            .collect();
        let r = load_state_dict(&m, &dict, "w.safetensors").unwrap();
        assert_eq!(r.loaded, 2);
        assert_eq!(r.stale_frozen, ["scaled.frozen0"]);
        assert_eq!(values(&m, "scaled.frozen0"), snapshot, "left as built");
        m.refresh_frozen().unwrap();
        assert_eq!(values(&m, "scaled.frozen0"), values(&m, "dense.weight"));
        // A dict that carries the snapshot too (a saved layerlens model) is not stale.
        let mut full = dict.clone();
        full.insert(
            "scaled.frozen0".into(),
            m.params().tensor("dense.weight").unwrap(),
        );
        let r = load_state_dict(&m, &full, "w.safetensors").unwrap();
        assert!(r.stale_frozen.is_empty(), "{:?}", r.stale_frozen);
    }

    #[test]
    fn safetensors_round_trip_and_bad_files() {
        let m = crate::zoo::seed_cnn(false).unwrap();
        let dir = std::env::temp_dir().join(format!("layerlens-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let dict: std::collections::HashMap<String, Tensor> = m
            .params()
            .iter()
            .map(|(k, p)| (k.to_string(), (p.var.as_detached_tensor() + 1.0).unwrap()))
            .collect();
        layerlens_core::candle_core::safetensors::save(&dict, &path).unwrap();
        let r = load_weights(&m, &path).unwrap();
        assert_eq!(r.loaded, 6);
        let bad = dir.join("w.pth");
        std::fs::write(&bad, b"garbage").unwrap();
        let e = load_weights(&m, &bad).unwrap_err().to_string();
        assert!(
            e.contains("w.pth: not a readable PyTorch state dict"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
