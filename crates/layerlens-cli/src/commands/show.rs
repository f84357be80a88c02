//! `layerlens show`: one layer's feature maps as a PNG grid.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Draws the feature maps of one layer for one image as a PNG grid.
///
/// Example: layerlens show zoo:efficientnet_lite0=imagenet --input cat.png --layer _blocks.1 --top 16 --out grid.png
#[derive(clap::Args, Clone)]
pub struct Args {
    /// An .onnx file, a Keras .keras / .h5 file, a saved layerlens model directory, or
    /// zoo:NAME[=WEIGHTS] (a .pth / .safetensors / Keras weights file, `imagenet` for the
    /// published weights, `random` for none).
    model: String,
    #[command(flatten)]
    shapes: super::OpenArgs,
    /// An image (png, jpg), or a .npy / .safetensors tensor.
    #[arg(long)]
    input: String,
    /// The layer (node name).
    #[arg(long)]
    layer: String,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Only the K channels with the highest mean activation.
    #[arg(long)]
    top: Option<usize>,
    /// gray, viridis, magma, inferno or rdbu (default: gray, rdbu for signed maps).
    #[arg(long)]
    cmap: Option<String>,
    /// auto (from the layer's activation), channel, shared.
    #[arg(long, default_value = "auto")]
    norm: String,
    /// Image preprocessing: unit ([0, 1]), imagenet, efficientnet-lite, caffe, tf, raw.
    /// `auto` (the default): what the zoo model's weights were trained with (`zoo:vgg16=imagenet`: caffe), else unit.
    #[arg(long, default_value = "auto")]
    preprocess: String,
}

/// Draws the grid.
pub fn run(a: &Args) -> Result<()> {
    let a = &Args {
        preprocess: super::resolve_preprocess(&a.preprocess, &a.model),
        ..a.clone()
    };
    use layerlens::viz::grid::{feature_grid, save_png, GridOptions, Select};
    use layerlens::viz::{Colormap, Norm};
    let model = super::open_model(&a.model, &a.shapes, std::slice::from_ref(&a.input))?;
    let x = super::input_tensor(&a.input, &model, &a.preprocess)?;
    let id = model.graph().find(&a.layer)?;
    let node = model.graph().node(id);
    let acts = model.extract(&x, &[a.layer.as_str()])?;
    let norm = match a.norm.as_str() {
        "auto" => Norm::Auto,
        "channel" => Norm::PerChannel,
        "shared" => Norm::Shared,
        other => bail!("--norm {other}: use auto, channel or shared"),
    };
    let opts = GridOptions {
        select: a.top.map_or(Select::All, Select::TopK),
        colormap: a.cmap.as_deref().map(Colormap::parse).transpose()?,
        norm,
        activation: node.op.final_activation(),
        title: Some(format!("{} {}", a.layer, node.shape)),
        ..Default::default()
    };
    save_png(&feature_grid(acts.get(&a.layer)?, &opts)?, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
