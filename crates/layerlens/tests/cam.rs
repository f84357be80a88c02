//! CAMs against pytorch-grad-cam (tests/fixtures/gen_cam.py): Grad-CAM and
//! Grad-CAM++ on EfficientNet-Lite0 with its real ImageNet weights (chelsea.png),
//! all five methods on the seed CNN, within 1e-3 of pytorch-grad-cam's scaled
//! heat maps; and Grad-CAM's energy falls on the cat.

mod common;
use common::{asset, max_diff};

use layerlens::prelude::*;
use layerlens::preprocess::{from_image, Preset};
use layerlens::viz::cam::{cam, eigen_projection, CamMethod, CamOptions};
use std::collections::HashMap;

fn refs() -> HashMap<String, Tensor> {
    layerlens::candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cam_refs.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap()
}

fn efficientnet() -> Model {
    let m = layerlens::zoo::efficientnet_lite0(1000).unwrap();
    layerlens::weights::load_weights(&m, asset("efficientnet-lite0.pth")).unwrap();
    m
}

#[test]
fn gradcam_and_gradcam_plus_plus_match_pytorch_grad_cam_on_efficientnet() {
    let fx = refs();
    let m = efficientnet();
    for (method, key) in [
        (CamMethod::GradCam, "gradcam"),
        (CamMethod::GradCamPlusPlus, "gradcam++"),
    ] {
        let c = cam(&m, &fx["effnet/input"], &CamOptions::new(method, "_relu1"))
            .unwrap()
            .remove(0);
        assert_eq!(c.class, 282, "tiger cat");
        let d = max_diff(&c.heatmap, &fx[&format!("effnet/{key}")]);
        assert!(d <= 1e-3, "{key}: max |diff| {d}");
    }
}

#[test]
fn all_five_methods_match_pytorch_grad_cam_on_the_seed_cnn() {
    let fx = refs();
    let m = layerlens::zoo::seed_cnn(false).unwrap();
    for (k, _) in m.params().iter() {
        m.params().set(k, &fx[&format!("seed/param/{k}")]).unwrap();
    }
    let x = &fx["seed/input"];
    for (method, key) in [
        (CamMethod::GradCam, "gradcam"),
        (CamMethod::GradCamPlusPlus, "gradcam++"),
        (CamMethod::LayerCam, "layercam"),
        (CamMethod::ScoreCam, "scorecam"),
    ] {
        let o = CamOptions {
            class: Some(3),
            ..CamOptions::new(method, "conv2d_1")
        };
        let cams = cam(&m, x, &o).unwrap();
        for (i, c) in cams.iter().enumerate() {
            let d = max_diff(&c.heatmap, &fx[&format!("seed/{key}")].get(i).unwrap());
            assert!(d <= 1e-3, "{key} sample {i}: max |diff| {d}");
        }
    }
    // Eigen-CAM: the SVD's sign is arbitrary; layerlens fixes it, so compare up to sign.
    let acts = m.extract(x, &["conv2d_1"]).unwrap();
    for i in 0..2 {
        let ours = eigen_projection(&acts.get("conv2d_1").unwrap().get(i).unwrap()).unwrap();
        let theirs = fx["seed/eigen_projection"].get(i).unwrap();
        let d = max_diff(&ours, &theirs).min(max_diff(&ours, &theirs.neg().unwrap()));
        let s = theirs
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d <= 1e-3 * s.max(1.0),
            "eigen projection {i}: {d} (scale {s})"
        );
    }
    // An out-of-range class is a clear error.
    let e = cam(
        &m,
        x,
        &CamOptions {
            class: Some(10),
            ..CamOptions::new(CamMethod::GradCam, "conv2d_1")
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("class 10 does not exist ('dense' has 10 classes)"),
        "{e}"
    );
}

fn energy_inside(heat: &Tensor, x0: usize, y0: usize, x1: usize, y1: usize) -> f32 {
    let total = heat.sum_all().unwrap().to_scalar::<f32>().unwrap();
    let inside = heat
        .narrow(0, y0, y1 - y0)
        .unwrap()
        .narrow(1, x0, x1 - x0)
        .unwrap()
        .sum_all()
        .unwrap();
    inside.to_scalar::<f32>().unwrap() / total
}

#[test]
fn gradcam_energy_falls_on_the_cat() {
    let m = efficientnet();
    let photo = image::open(asset("chelsea.png")).unwrap();
    let opts = CamOptions::new(CamMethod::GradCam, "_relu1");
    // The whole photo at 224×224: the cat is everything left of x = 180 (the
    // background shows on the right); committed box (0, 0)–(180, 224).
    let full = photo.resize_exact(224, 224, image::imageops::FilterType::Triangle);
    let c = cam(
        &m,
        &from_image(&full, 3, Preset::EfficientNetLite).unwrap(),
        &opts,
    )
    .unwrap()
    .remove(0);
    let e = energy_inside(&c.heatmap, 0, 0, 180, 224);
    eprintln!("whole photo: {e:.3} of the energy in the cat box (80 % of the area)");
    assert!(e >= 0.7, "{:.3} of the Grad-CAM energy is on the cat", e);
    // A harder framing: the photo shrunk to 120×80 on a neutral 224×224 canvas, so
    // the cat's box is 19 % of the image.
    let small = photo
        .resize_exact(120, 80, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut canvas = image::RgbImage::from_pixel(224, 224, image::Rgb([127, 127, 127]));
    image::imageops::overlay(&mut canvas, &small, 20, 120);
    let x = from_image(
        &image::DynamicImage::ImageRgb8(canvas),
        3,
        Preset::EfficientNetLite,
    )
    .unwrap();
    let c = cam(&m, &x, &opts).unwrap().remove(0);
    let classes = layerlens::preprocess::imagenet_classes();
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"].contains(&classes[c.class]),
        "{}",
        classes[c.class]
    );
    let e = energy_inside(&c.heatmap, 20, 120, 140, 200);
    let area = (120.0 * 80.0) / (224.0 * 224.0);
    eprintln!("pasted cat: {e:.3} of the energy in a box of {area:.3} of the area");
    // A 7×7 map upsampled 32× spreads past a small box; ask for 2.5× the uniform share.
    assert!(
        e >= 2.5 * area,
        "{e:.3} of the Grad-CAM energy is on the pasted cat ({area:.3} of the area)"
    );
}
