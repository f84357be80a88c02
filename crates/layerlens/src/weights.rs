//! Loading PyTorch weights: state dicts from `.pth` / `.pt` (zip + pickle, read by
//! candle without Python) and from `.safetensors`, matched to a model's
//! parameters by key.

use layerlens_core::candle_core::{Device, Tensor};
use layerlens_core::{Error, Model, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a state dict: `.safetensors`, or a PyTorch `.pth` / `.pt` / `.bin` file.
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
    let pairs: Vec<(String, Tensor)> = match ext {
        "safetensors" => layerlens_core::candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect(),
        "pth" | "pt" | "bin" | "ckpt" => {
            if is_legacy_pth(path).map_err(|e| bad(e.to_string()))? {
                read_legacy_pth(path).map_err(|e| {
                    bad(format!(
                        "not a readable legacy PyTorch state dict: {}",
                        first_line(&e)
                    ))
                })?
            } else {
                layerlens_core::candle_core::pickle::read_all(path).map_err(|e| {
                    bad(format!(
                        "not a readable PyTorch state dict (zip + pickle): {}",
                        first_line(&e)
                    ))
                })?
            }
        }
        other => {
            return Err(bad(format!(
                "unknown weights format '.{other}' (use .pth, .pt or .safetensors)"
            )))
        }
    };
    Ok(pairs.into_iter().collect())
}

/// candle errors can carry a backtrace after the message; errors here are one line.
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// The pickle of PyTorch's legacy (pre-1.6, non-zip) format starts with this
/// magic number as a protocol-2 LONG1.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

fn is_legacy_pth(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 15];
    let n = std::fs::File::open(path)?.read(&mut head)?;
    Ok(n == head.len() && head == LEGACY_MAGIC)
}

/// Reads PyTorch's legacy serialisation (`torch.save` before 1.6, or with
/// `_use_new_zipfile_serialization=False`): five pickles (magic, protocol,
/// system info, the object, the storage keys) followed by each storage as a
/// little-endian i64 element count and its raw bytes.
fn read_legacy_pth(path: &Path) -> layerlens_core::candle_core::Result<Vec<(String, Tensor)>> {
    use layerlens_core::candle_core::pickle::{Object, Stack};
    use layerlens_core::candle_core::{bail, Error as CErr};
    use std::io::Read;
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 15];
    r.read_exact(&mut magic)?;
    let next =
        |r: &mut std::io::BufReader<std::fs::File>| -> layerlens_core::candle_core::Result<Object> {
            let mut st = Stack::empty();
            st.read_loop(r)?;
            st.finalize()
        };
    let _protocol = next(&mut r)?;
    let _sys_info = next(&mut r)?;
    let obj = next(&mut r)?;
    let keys = match next(&mut r)? {
        Object::List(k) => k
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| CErr::Msg(format!("bad storage key {o:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => bail!("expected the list of storage keys, found {other:?}"),
    };
    let Object::Dict(entries) = obj else {
        bail!("the pickled object is not a state dict")
    };
    let infos: Vec<_> = entries
        .into_iter()
        .filter_map(|(name, value)| value.into_tensor_info(name, Path::new("")).transpose())
        .collect::<Result<_, _>>()?;
    let mut storages = std::collections::HashMap::new();
    for key in keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let numel = i64::from_le_bytes(n) as usize;
        let dtype = infos
            .iter()
            .find(|i| i.path.trim_start_matches('/') == key)
            .map(|i| i.dtype)
            .ok_or_else(|| CErr::Msg(format!("storage '{key}' is used by no tensor")))?;
        let mut bytes = vec![0u8; numel * dtype.size_in_bytes()];
        r.read_exact(&mut bytes)?;
        storages.insert(
            key,
            Tensor::from_raw_buffer(&bytes, dtype, &[numel], &Device::Cpu)?,
        );
    }
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let key = info.path.trim_start_matches('/');
        let storage = storages.get(key).ok_or_else(|| {
            CErr::Msg(format!(
                "tensor '{}' uses missing storage '{key}'",
                info.name
            ))
        })?;
        let l = &info.layout;
        let dims = l.shape().dims();
        // Any permutation of a contiguous layout (e.g. a transposed Linear weight):
        // lay the storage out in stride order, then permute back.
        let mut order: Vec<usize> = (0..dims.len()).collect();
        order.sort_by(|&a, &b| l.stride()[b].cmp(&l.stride()[a]).then(a.cmp(&b)));
        let mut expect = 1usize;
        let permuted_contiguous = order.iter().rev().all(|&d| {
            let ok = dims[d] == 1 || l.stride()[d] == expect;
            expect *= dims[d];
            ok
        });
        if !permuted_contiguous {
            bail!("tensor '{}' has an unsupported strided layout {:?}; re-save it with a current PyTorch", info.name, l.stride());
        }
        let start = l.start_offset() / info.dtype.size_in_bytes();
        let sorted: Vec<usize> = order.iter().map(|&d| dims[d]).collect();
        let mut inverse = vec![0usize; order.len()];
        for (i, &d) in order.iter().enumerate() {
            inverse[d] = i;
        }
        let t = storage
            .narrow(0, start, l.shape().elem_count())?
            .reshape(sorted)?
            .permute(inverse)?
            .contiguous()?;
        out.push((info.name, t));
    }
    Ok(out)
}

/// What [`load_state_dict`] matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters loaded.
    pub loaded: usize,
    /// State-dict keys that were skipped on purpose (`num_batches_tracked`).
    pub ignored: Vec<String>,
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
            debug_assert_eq!(p.kind, layerlens_core::params::ParamKind::Constant);
        }
    }
    Ok(report)
}

/// [`read_state_dict`] then [`load_state_dict`].
pub fn load_weights(model: &Model, path: impl AsRef<Path>) -> Result<LoadReport> {
    let path = path.as_ref();
    let dict = read_state_dict(path)?;
    load_state_dict(model, &dict, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerlens_core::candle_core::DType;

    #[test]
    fn mismatches_list_missing_unexpected_and_wrong_shapes_and_change_nothing() {
        let m = crate::zoo::seed_cnn(false).unwrap();
        let before = m
            .params()
            .tensor("dense.bias")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
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
        assert_eq!(
            m.params()
                .tensor("dense.bias")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            before,
            "nothing changed"
        );
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
