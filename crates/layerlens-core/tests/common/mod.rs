//! Shared test helpers: fixture loading and a tolerance check.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// Loads a fixture under `tests/fixtures/`.
pub fn fixture(rel: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A comparison tolerance: `|got - want| <= atol + rtol * |want|` element-wise.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// float32 vs float32 from another framework: summation order differs.
pub const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-4,
};

/// Asserts two tensors have the same shape and agree within `tol`; reports the
/// worst element.
pub fn assert_close(got: &Tensor, want: &Tensor, tol: Tol, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = (0usize, 0f32);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: non-finite value {a} at {i}");
        let excess = (a - b).abs() - (tol.atol + tol.rtol * b.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} is {} but the reference is {} (tolerance {:?})",
        worst.0,
        g[worst.0],
        w[worst.0],
        tol
    );
}

/// Max absolute difference (for reporting).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
