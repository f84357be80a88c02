//! Helpers shared by the CLI tests: run the real binary, scratch directories,
//! real Fashion-MNIST images as PNG pictures.
#![allow(dead_code)]

use layerlens::data::LabelledImages;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `layerlens` binary built for these tests.
pub fn layerlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layerlens"))
        .args(args)
        .output()
        .unwrap()
}

/// An empty directory of its own for one test (`name` keeps tests apart).
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layerlens-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A cached real asset (`scripts/fetch-models.sh` puts them in
/// `$LAYERLENS_CACHE/assets`, default `~/.cache/layerlens/assets`).
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

/// A path as `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Image `i` of a Fashion-MNIST set (values in [0, 1]) as a 28×28 grayscale picture.
pub fn fashion_picture(data: &LabelledImages, i: usize) -> image::GrayImage {
    let px: Vec<u8> = data
        .images
        .get(i)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    image::GrayImage::from_raw(28, 28, px).unwrap()
}
