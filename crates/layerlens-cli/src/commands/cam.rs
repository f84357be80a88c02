//! `layerlens cam`: a class activation map over the input image.

use anyhow::Result;
use std::path::{Path, PathBuf};

/// Draws a class activation map over the input image.
///
/// Example: layerlens cam zoo:efficientnet_lite0=imagenet --input cat.png --layer _relu1 --method gradcam++ --out cam.png
#[derive(clap::Args, Clone)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    #[command(flatten)]
    shapes: super::OpenArgs,
    /// An image (png, jpg).
    #[arg(long)]
    input: String,
    /// The layer whose activations are weighted (usually the last conv block).
    #[arg(long)]
    layer: String,
    /// The class to explain (default: the top prediction).
    #[arg(long)]
    class: Option<usize>,
    /// gradcam, gradcam++, scorecam, eigencam or layercam.
    #[arg(long, default_value = "gradcam")]
    method: String,
    /// Heat-map opacity.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Image preprocessing: unit, imagenet, efficientnet-lite, or Keras' caffe, tf, raw.
    /// `auto` (the default): what the zoo model's weights were trained with (`zoo:vgg16=imagenet`: caffe), else unit.
    #[arg(long, default_value = "auto")]
    preprocess: String,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

/// Computes the map and writes the overlay.
pub fn run(a: &Args) -> Result<()> {
    let a = &Args {
        preprocess: super::resolve_preprocess(&a.preprocess, &a.model),
        ..a.clone()
    };
    use layerlens::viz::cam::{cam, overlay, CamMethod, CamOptions};
    let model = super::open_model(&a.model, &a.shapes, std::slice::from_ref(&a.input))?;
    let (x, picture) =
        layerlens::spec::load_picture(Path::new(&a.input), &model, super::preset(&a.preprocess)?)?;
    let parsed = CamMethod::parse(&a.method)?;
    let method = parsed.label();
    let opts = CamOptions {
        class: a.class,
        ..CamOptions::new(parsed, &a.layer)
    };
    let c = cam(&model, &x, &opts)?.remove(0);
    if c.raw.max_all()?.to_scalar::<f32>()? <= 0.0 {
        eprintln!("warning: the {method} map is zero everywhere for class {} (every weighted sum is negative); try --method gradcam++ or layercam", c.class);
    }
    let mut img = overlay(
        &picture,
        &c.heatmap,
        layerlens::viz::Colormap::Inferno,
        a.alpha,
    )?;
    if img.width() < 224 {
        // Small inputs (28×28) are scaled up, pixel for pixel, to be readable.
        let k = 224u32.div_ceil(img.width());
        img = image::imageops::resize(
            &img,
            img.width() * k,
            img.height() * k,
            image::imageops::FilterType::Nearest,
        );
    }
    layerlens::viz::grid::save_png(&img, &a.out)?;
    // Classes by name where the model's labels are known (the zoo's).
    let class =
        match layerlens_explorer::known_labels(&a.model).and_then(|l| l.get(c.class).cloned()) {
            Some(name) => format!("class {} ({name})", c.class),
            None => format!("class {}", c.class),
        };
    eprintln!(
        "wrote {} ({method} for {class}, score {:.3})",
        a.out.display(),
        c.score
    );
    Ok(())
}
