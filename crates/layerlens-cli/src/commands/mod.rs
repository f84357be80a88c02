//! One module per command, each with its clap `Args` and a `run`; the
//! helpers they share are here.

pub mod cam;
pub mod demo;
pub mod explore;
pub mod extract;
pub mod report;
pub mod show;
pub mod summary;
pub mod train;

use anyhow::Result;
use layerlens::prelude::*;
use layerlens::spec::Preset;
use std::path::Path;

/// Training allocates and frees the same large buffers every step. glibc's
/// defaults give blocks above a (dynamic) threshold their own mmap and trim
/// the heap's free top, so each step faulted its buffers in again: the demo's
/// 3 epochs took 6.0 s instead of 4.0 s (docs/performance.md). For training,
/// freed memory stays in the heap for reuse; extraction keeps the defaults,
/// which hand memory back and keep a long run's RSS flat.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before training
    // starts, on the main thread.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// How to open MODEL: the sizes of an ONNX model's symbolic input
/// dimensions, the ops standing in for a Keras model's Lambda layers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpenArgs {
    /// Per-sample shape of a graph input whose sizes the ONNX file leaves
    /// symbolic, without the batch: [NAME=]C,H,W (NAME only for models with
    /// several inputs); images are resized to it. Default: the shape of a
    /// .npy / .safetensors input. Repeat for several inputs.
    #[arg(long, value_name = "[NAME=]C,H,W")]
    pub input_shape: Vec<String>,
    /// The size of one symbolic dimension by its ONNX name (height=320);
    /// repeatable.
    #[arg(long, value_name = "NAME=SIZE")]
    pub dim: Vec<String>,
    /// Runs a layerlens Lambda in place of a Keras Lambda layer (whose Python
    /// code is never run): LAYER=LAMBDA or LAYER=LAMBDA(JSON_ARGS), e.g.
    /// spatial_mean='mean({"axes":[2,3]})' (axes in layerlens' NCHW terms);
    /// LAMBDA is one of mean, sum, max, l2_normalize, scale, reshape, flatten,
    /// concat, conv2d_ref, scale_by_weight. Repeatable.
    #[arg(long, value_name = "LAYER=LAMBDA(ARGS)")]
    pub bind: Vec<String>,
}

/// Opens MODEL, warning on stderr when it runs on random weights that look
/// like a pretrained model's (`zoo:resnet18` without `=WEIGHTS`); an ONNX
/// file's symbolic sizes come from `shapes`, else from the first tensor input.
fn open_model(spec: &str, shapes: &OpenArgs, inputs: &[String]) -> Result<Model> {
    if let Some(w) = layerlens::spec::random_weights_warning(spec) {
        eprintln!("warning: {w}");
    }
    let shapes =
        layerlens::spec::OpenOptions::parse(&shapes.input_shape, &shapes.dim, &shapes.bind)?;
    Ok(layerlens::spec::open_model_for_inputs(
        spec, &shapes, inputs,
    )?)
}

/// `--preprocess auto` as the preset `model`'s weights were trained with
/// (`zoo:vgg16=imagenet`: Keras' caffe), `unit` for other models; any other
/// value as given.
fn resolve_preprocess(choice: &str, model: &str) -> String {
    if choice == "auto" {
        layerlens::spec::default_preprocess(model)
            .unwrap_or("unit")
            .to_string()
    } else {
        choice.to_string()
    }
}

/// `--preprocess` parsed.
fn preset(name: &str) -> Result<Preset> {
    Ok(Preset::parse(name)?)
}

/// The first sample of an input spec, as a batch of one.
fn input_tensor(spec: &str, model: &Model, preprocess: &str) -> Result<Tensor> {
    let (x, _) = layerlens::spec::load_inputs(spec, model, preset(preprocess)?)?;
    Ok(if x.dim(0)? > 1 { x.narrow(0, 0, 1)? } else { x })
}

/// Writes `bytes` to `path` atomically, with the umask's mode.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(layerlens::fsio::write_atomic(path, |f| {
        std::io::Write::write_all(f, bytes)
    })?)
}
