//! Helpers shared by the Keras reference tests: fixtures, reference files
//! (safetensors written by the `gen_*.py` scripts beside the fixtures) and the
//! element-wise comparison.
#![allow(dead_code)]

use layerlens_core::candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// layerlens' cache directory (`LAYERLENS_CACHE` or `~/.cache/layerlens`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LAYERLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/layerlens")
        })
}

/// Every float32 tensor of a safetensors file, by name.
pub fn read_refs(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let vals: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k, Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
        })
        .collect()
}

/// The references of a fixture file.
pub fn refs(name: &str) -> BTreeMap<String, Tensor> {
    read_refs(&fixture(name))
}

/// Max of |got - want| - (atol + rtol |want|) must be <= 0; returns the worst abs error.
pub fn check_within(name: &str, got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= atol + rtol * b.abs(),
            "{name}[{i}]: layerlens {a} vs Keras {b} (|diff| {err}, allowed {atol:e} + {rtol:e}·|Keras|)"
        );
        worst = worst.max(err);
    }
    worst
}

/// [`check_within`] at the tests' default tolerance, 1e-5 absolute + 1e-4 relative.
pub fn check(name: &str, got: &Tensor, want: &Tensor) -> f32 {
    check_within(name, got, want, 1e-5, 1e-4)
}
