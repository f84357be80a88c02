//! Shared test helpers: the pinned assets of scripts/fetch-models.sh, a max-diff,
//! and the mirror of tests/fixtures/synth.py (deterministic synthetic weights,
//! identical in Python and Rust: splitmix64 in exact integer arithmetic).
#![allow(dead_code)]

use layerlens::prelude::*;
use std::path::PathBuf;

/// A file fetched by scripts/fetch-models.sh, or a panic saying how to get it.
pub fn asset(name: &str) -> PathBuf {
    let cache = std::env::var("LAYERLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/layerlens"));
    let p = cache.join("assets").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does it for you)",
        p.display()
    );
    p
}

/// Largest absolute element-wise difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn key_seed(key: &str) -> u64 {
    key.bytes()
        .enumerate()
        .map(|(j, b)| b as u64 * (j as u64 + 1))
        .sum::<u64>()
        % 997
        * 1_000_003
}

/// Mirror of `uniform` in tests/fixtures/synth.py: splitmix64 of (index + seed) in [-1, 1).
pub fn uniform(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let mut z = (i.wrapping_add(seed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// Mirror of `synth` in tests/fixtures/synth.py.
pub fn synth(key: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let seed = key_seed(key);
    let fan_in: usize = shape[1..].iter().product();
    let v: Vec<f32> = uniform(seed, n)
        .into_iter()
        .map(|base| {
            let v = if key.ends_with("running_var") {
                1.0 + 0.3 * base.abs()
            } else if key.ends_with("running_mean") {
                0.05 * base
            } else if shape.len() == 1 && key.ends_with("weight") {
                1.0 + 0.2 * base
            } else if key.ends_with("bias") {
                0.05 * base
            } else {
                base * (6.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn synth_input(shape: &[usize]) -> Tensor {
    let v: Vec<f32> = uniform(12345, shape.iter().product())
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
