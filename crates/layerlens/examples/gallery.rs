//! Writes the pictures in docs/images: feature-map grids, first-layer filters and
//! the five CAMs of EfficientNet-Lite0 (real weights) on scikit-image's chelsea.png.
//!
//! Run: scripts/fetch-models.sh && cargo run --release -p layerlens --example gallery [OUT_DIR]

use layerlens::preprocess::{from_image, Preset};
use layerlens::viz::cam::{cam, overlay, to_rgb_image, CamMethod, CamOptions};
use layerlens::viz::grid::{feature_grid, filter_grid, save_png, GridOptions, Select};
use layerlens::viz::report::{html_report, ReportOptions};
use layerlens::viz::Colormap;
use layerlens::Result;
use std::path::PathBuf;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/images".into()),
    );
    std::fs::create_dir_all(&out).map_err(|source| layerlens::Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    let assets =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/layerlens/assets");
    let model = layerlens::zoo::efficientnet_lite0(1000)?;
    layerlens::weights::load_weights(&model, assets.join("efficientnet-lite0.pth"))?;
    let photo = image::open(assets.join("chelsea.png"))
        .map_err(|e| layerlens::Error::Format {
            path: "chelsea.png".into(),
            message: e.to_string(),
        })?
        .resize_exact(224, 224, image::imageops::FilterType::Triangle);
    let x = from_image(&photo, 3, Preset::EfficientNetLite)?;
    let base = to_rgb_image(&from_image(&photo, 3, Preset::UnitRange)?)?;
    let classes = layerlens::preprocess::imagenet_classes();

    let acts = model.extract(&x, &["_blocks.1", "_relu1"])?;
    let grid = GridOptions {
        select: Select::TopK(16),
        title: Some("_blocks.1 (top 16 of 24 by mean)".into()),
        ..Default::default()
    };
    save_png(
        &feature_grid(acts.get("_blocks.1")?, &grid)?,
        out.join("grid_blocks1.png"),
    )?;
    let relu6 = GridOptions {
        select: Select::TopK(16),
        activation: Some(layerlens::ops::Activation::Relu6),
        colormap: Some(Colormap::Viridis),
        tile: 56,
        title: Some("_relu1, ReLU6 range [0, 6], top 16 of 1280".into()),
        ..Default::default()
    };
    save_png(
        &feature_grid(acts.get("_relu1")?, &relu6)?,
        out.join("grid_relu1.png"),
    )?;
    save_png(
        &filter_grid(&model.params().tensor("_conv_stem.weight")?, 8, 24)?,
        out.join("filters_conv_stem.png"),
    )?;

    for (method, name) in [
        (CamMethod::GradCam, "gradcam"),
        (CamMethod::GradCamPlusPlus, "gradcam_pp"),
        (CamMethod::LayerCam, "layercam"),
        (CamMethod::EigenCam, "eigencam"),
        (CamMethod::ScoreCam, "scorecam"),
    ] {
        let layer = if method == CamMethod::ScoreCam {
            "_blocks.15"
        } else {
            "_relu1"
        };
        let c = cam(
            &model,
            &x,
            &CamOptions {
                batch: 32,
                ..CamOptions::new(method, layer)
            },
        )?
        .remove(0);
        save_png(
            &overlay(&base, &c.heatmap, Colormap::Inferno, 0.5)?,
            out.join(format!("cam_{name}.png")),
        )?;
        println!(
            "{name:<11} over {layer:<10}: class {} ({})",
            c.class, classes[c.class]
        );
    }
    let report = ReportOptions {
        title: "EfficientNet-Lite0 on chelsea.png".into(),
        layers: Some(
            [
                "_relu0",
                "_blocks.1",
                "_blocks.5",
                "_blocks.10",
                "_blocks.15",
                "_relu1",
            ]
            .map(String::from)
            .to_vec(),
        ),
        cam: Some(CamOptions::new(CamMethod::GradCam, "_relu1")),
        class_names: Some(classes.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let html = html_report(&model, &x, Some(&base), &report)?;
    let path = out.join("report.html");
    std::fs::write(&path, html).map_err(|source| layerlens::Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    println!("wrote {}", path.display());
    Ok(())
}
