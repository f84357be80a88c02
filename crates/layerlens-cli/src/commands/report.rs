//! `layerlens report`: the explorer's static export (`layerlens explore
//! --static`) under its older name.

use anyhow::Result;
use std::path::PathBuf;

/// Writes a self-contained HTML page: the explorer's static export, with the
/// graph, and for the chosen nodes their feature maps, statistics, histogram
/// and Grad-CAM++ (same as `layerlens explore MODEL --input IMG --static OUT`).
///
/// Example: layerlens report zoo:seed_cnn --input boot.png --out report.html
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    #[command(flatten)]
    shapes: super::OpenArgs,
    /// An image (png, jpg), or a .npy / .safetensors tensor; repeat for several.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Comma-separated nodes, blocks or globs (default: up to 8 spread over the depth).
    #[arg(long)]
    layers: Option<String>,
    /// Image preprocessing: unit, imagenet, efficientnet-lite, caffe, tf, raw (default: what a zoo model was trained with, else unit).
    #[arg(long)]
    preprocess: Option<String>,
    /// Class names, one per line (default: ImageNet for the zoo models, Fashion-MNIST for the seed CNN).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The CAM method (gradcam, gradcam++, scorecam, eigencam, layercam).
    #[arg(long, default_value = "gradcam++")]
    method: String,
    /// Output HTML file.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the report.
pub fn run(a: &Args) -> Result<()> {
    super::explore::run(&super::explore::Args {
        model: a.model.clone(),
        shapes: a.shapes.clone(),
        input: a.input.clone(),
        preprocess: a.preprocess.clone(),
        labels: a.labels.clone(),
        port: 0,
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        allow_remote: false,
        static_out: Some(a.out.clone()),
        nodes: a.layers.clone(),
        method: a.method.clone(),
    })
}
