//! The public entry points the fuzz targets drive, one function per target.
//! Shared (by `#[path]`) with the stable corpus-replay test
//! crates/layerlens/tests/fuzz_regressions.rs, so that a regression file runs
//! through exactly what the fuzzer ran. Each returns the error message, if any;
//! none may panic.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// An entry point: the bytes in, the error message (if any) out.
pub type Entry = fn(&[u8]) -> Result<(), String>;

/// Every target: its name (the folder under fuzz/regressions/) and entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("onnx_import", onnx_import),
    ("pth_state_dict", pth_state_dict),
    ("model_json", model_json),
    ("image", image),
    ("npy", npy),
    ("safetensors_input", safetensors_input),
    ("safetensors_weights", safetensors_weights),
    ("onnx_external_data", onnx_external_data),
    ("keras", keras),
];

/// Targets whose regression files are all malformed: each must be refused
/// with a one-line error (the others may load).
pub const MUST_REFUSE: &[&str] = &[
    "onnx_import",
    "pth_state_dict",
    "npy",
    "onnx_external_data",
    "keras",
];

/// `layerlens::onnx::import_bytes`; external data resolves against a
/// directory that does not exist, so it must fail cleanly.
pub fn onnx_import(data: &[u8]) -> Result<(), String> {
    layerlens::onnx::import_bytes(
        data,
        Path::new("/nonexistent/layerlens-fuzz"),
        "fuzz.onnx",
        &layerlens::onnx::ImportOptions::default(),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// `layerlens::weights::read_pth_bytes` (zip and legacy `.pth`).
pub fn pth_state_dict(data: &[u8]) -> Result<(), String> {
    layerlens::weights::read_pth_bytes(data, "fuzz.pth")
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A scratch directory of this process, created on first use.
fn scratch() -> &'static Mutex<PathBuf> {
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("layerlens-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        Mutex::new(d)
    })
}

/// `Model::load` on `data` as `model.json`, beside the valid
/// `model.safetensors` of the seed CNN.
pub fn model_json(data: &[u8]) -> Result<(), String> {
    let dir = scratch().lock().unwrap_or_else(|e| e.into_inner());
    let model_dir = dir.join("model");
    if !model_dir.join("model.safetensors").exists() {
        let m = layerlens::zoo::seed_cnn(true).map_err(|e| e.to_string())?;
        m.save(&model_dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(model_dir.join("model.json"), data).map_err(|e| e.to_string())?;
    layerlens::Model::load(&model_dir, &layerlens::candle_core::Device::Cpu)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `layerlens::preprocess::decode_image` (PNG or JPEG, by the first bytes).
pub fn image(data: &[u8]) -> Result<(), String> {
    let dir = scratch().lock().unwrap_or_else(|e| e.into_inner());
    let ext = if data.starts_with(b"\x89PNG") {
        "png"
    } else {
        "jpg"
    };
    let path = dir.join(format!("input.{ext}"));
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    layerlens::preprocess::decode_image(&path)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `layerlens::npy::read_npy_bytes`, what `extract --input x.npy` reads.
pub fn npy(data: &[u8]) -> Result<(), String> {
    layerlens::npy::read_npy_bytes(data, "fuzz.npy")
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `layerlens::extract::read_safetensors_input_bytes`, what `extract --input
/// x.safetensors` reads.
pub fn safetensors_input(data: &[u8]) -> Result<(), String> {
    layerlens::extract::read_safetensors_input_bytes(data, "fuzz.safetensors")
        .map(drop)
        .map_err(|e| e.to_string())
}

thread_local! {
    /// The seed CNN the weights are loaded into, built once per thread.
    static SEED_CNN: layerlens::Model = layerlens::zoo::seed_cnn(true).expect("seed CNN");
}

/// `layerlens::weights::load_weights` of the bytes as `weights.safetensors`
/// into the seed CNN (read, matched by key and shape, copied).
pub fn safetensors_weights(data: &[u8]) -> Result<(), String> {
    let dir = scratch().lock().unwrap_or_else(|e| e.into_inner());
    let path = dir.join("weights.safetensors");
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    SEED_CNN.with(|m| {
        layerlens::weights::load_weights(m, &path)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

/// Bytes of `weights.bin`, the data file beside the fuzzed model: 1024
/// float32 values `i / 1024` (fuzz/gen_onnx_external_data.py's seeds read
/// ranges of it).
pub const EXTERNAL_DATA_LEN: usize = 4096;

/// `layerlens::onnx::import_bytes` with the model's directory a scratch
/// directory holding a real data file, `weights.bin`, so external-data
/// references (location, offset, length) are resolved and read.
pub fn onnx_external_data(data: &[u8]) -> Result<(), String> {
    let dir = scratch().lock().unwrap_or_else(|e| e.into_inner());
    let model_dir = dir.join("onnx-external");
    let bin = model_dir.join("weights.bin");
    if !bin.exists() {
        std::fs::create_dir_all(&model_dir).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = (0..EXTERNAL_DATA_LEN / 4)
            .flat_map(|i| (i as f32 / 1024.0).to_le_bytes())
            .collect();
        std::fs::write(&bin, bytes).map_err(|e| e.to_string())?;
    }
    layerlens::onnx::import_bytes(
        data,
        &model_dir,
        "fuzz.onnx",
        &layerlens::onnx::ImportOptions::default(),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// `layerlens::keras::import_bytes`: a `.keras` zip or a legacy full-model
/// `.h5`, told apart by content (zip reader, pure-Rust HDF5 reader, Keras
/// config and weights).
pub fn keras(data: &[u8]) -> Result<(), String> {
    layerlens::keras::import_bytes(
        data,
        "fuzz.keras",
        &layerlens::keras::ImportOptions::default(),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}
