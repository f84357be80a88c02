//! `layerlens report`: a self-contained HTML report.

use anyhow::Result;
use std::path::{Path, PathBuf};

/// Writes a self-contained HTML report: summary, Grad-CAM++, and per layer the
/// feature maps, statistics and a histogram.
///
/// Example: layerlens report zoo:seed_cnn --input boot.png --out report.html
#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, a saved layerlens model directory, or zoo:NAME[=WEIGHTS.pth].
    model: String,
    /// An image (png, jpg), or a .npy / .safetensors tensor.
    #[arg(long)]
    input: String,
    /// Comma-separated layers (default: up to 8 spread over the depth).
    #[arg(long)]
    layers: Option<String>,
    /// Image preprocessing: unit, imagenet, efficientnet-lite.
    #[arg(long, default_value = "unit")]
    preprocess: String,
    /// Output HTML file.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the report.
pub fn run(a: &Args) -> Result<()> {
    use layerlens::viz::cam::{CamMethod, CamOptions};
    use layerlens::viz::report::{html_report, ReportOptions};
    let model = super::open_model(&a.model)?;
    let input = a.input.as_str();
    let (x, picture) = if layerlens::extract::is_image_file(Path::new(input)) {
        let (x, p) =
            layerlens::spec::load_picture(Path::new(input), &model, super::preset(&a.preprocess)?)?;
        (x, Some(p))
    } else {
        (super::input_tensor(input, &model, &a.preprocess)?, None)
    };
    // Grad-CAM++ over the deepest image-shaped layer that is not a pooling.
    let g = model.graph();
    let last = g.nodes().iter().rev().find(|n| {
        n.shape.rank() == 3
            && !matches!(
                n.op,
                layerlens::ir::OpT::Input(_) | layerlens::ir::OpT::Pool2d(_)
            )
    });
    let opts = ReportOptions {
        title: format!("layerlens report: {} on {input}", model.name()),
        layers: a.layers.as_deref().map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        cam: last.map(|n| CamOptions::new(CamMethod::GradCamPlusPlus, &n.name)),
        ..Default::default()
    };
    let html = html_report(&model, &x, picture.as_ref(), &opts)?;
    super::write_atomic(&a.out, html.as_bytes())?;
    eprintln!(
        "wrote {} (open it in a browser; it needs no network)",
        a.out.display()
    );
    Ok(())
}
