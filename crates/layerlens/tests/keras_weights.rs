//! Keras weights into a model built in code with Keras' layer names (what
//! `zoo:vgg16=imagenet` does with keras.applications' VGG16 file), against
//! Keras' own outputs. Fixtures: crates/layerlens-keras/tests/fixtures/
//! gen_weights_into_model.py (a Conv2D, BatchNormalization, DepthwiseConv2D,
//! MaxPooling2D, Flatten, Dense model, saved weights-only three ways).

mod common;
use common::max_diff;

use layerlens::prelude::*;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../layerlens-keras/tests/fixtures"
    ))
    .join(name)
}

/// The fixture's architecture, channel-first, with layerlens' own Flatten.
fn tiny() -> Model {
    Sequential::new("tiny", [3, 8, 8])
        .add_as(
            "block1_conv1",
            Conv2d::new(4, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu),
        )
        .unwrap()
        .add_as("bn", BatchNorm::new().eps(1e-3))
        .unwrap()
        .add_as("dw", Conv2d::new(4, 3).groups(4).padding(Padding::Same))
        .unwrap()
        .add_as("pool", Pool2d::max(4))
        .unwrap()
        .add_as("flatten", Flatten)
        .unwrap()
        .add_as("predictions", Dense::new(5).activation(Activation::SOFTMAX))
        .unwrap()
        .build()
        .unwrap()
}

fn refs() -> std::collections::BTreeMap<String, Tensor> {
    layerlens::candle_core::safetensors::load(fixture("tiny_ref.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn keras_weights_in_every_layout_load_into_a_built_model_and_match_keras() {
    let refs = refs();
    let nhwc = layerlens::keras::layout::nhwc_to_nchw;
    let x = nhwc(&refs["input"]).unwrap();
    // Keras 3 `.weights.h5`, legacy `save_weights`, keras.applications' 2017 layout.
    for file in ["tiny.weights.h5", "tiny_legacy.h5", "tiny_2017.h5"] {
        let m = tiny();
        let report = layerlens::weights::load_weights(&m, fixture(file)).unwrap();
        assert_eq!(report.loaded, 10, "{file}: every parameter");
        let acts = m
            .extract(&x, &["block1_conv1", "bn", "dw", "predictions"])
            .unwrap();
        for layer in ["block1_conv1", "bn", "dw"] {
            let d = max_diff(acts.get(layer).unwrap(), &nhwc(&refs[layer]).unwrap());
            assert!(d < 1e-5, "{file} {layer}: max |diff| {d}");
        }
        // The Dense after the Flatten only matches if its rows were reordered
        // from Keras' (H, W, C) order to layerlens' (C, H, W).
        let d = max_diff(acts.get("predictions").unwrap(), &refs["predictions"]);
        assert!(d < 1e-6, "{file} predictions: max |diff| {d}");
    }
}

#[test]
fn keras_weights_that_do_not_fit_are_refused_by_name() {
    // A layer name the model lacks: the error names it and the close matches.
    let m = Sequential::new("other", [3, 8, 8])
        .add_as("block1_conv2", Conv2d::new(4, 3).padding(Padding::Same))
        .unwrap()
        .build()
        .unwrap();
    let e = layerlens::weights::load_weights(&m, fixture("tiny_2017.h5"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny_2017.h5")
            && e.contains("block1_conv1: the Keras file has weights for this layer, and model 'other' has no layer"),
        "{e}"
    );
    assert!(
        e.contains("(close: block1_conv2)"),
        "close match listed: {e}"
    );

    // A model with every Keras layer but also one more parameter layer: the
    // strict load refuses the parameters the file does not have.
    let m = Sequential::new("tiny_plus", [3, 8, 8])
        .add_as(
            "block1_conv1",
            Conv2d::new(4, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu),
        )
        .unwrap()
        .add_as("bn", BatchNorm::new().eps(1e-3))
        .unwrap()
        .add_as("dw", Conv2d::new(4, 3).groups(4).padding(Padding::Same))
        .unwrap()
        .add_as("extra", Conv2d::new(4, 1))
        .unwrap()
        .add_as("pool", Pool2d::max(4))
        .unwrap()
        .add_as("flatten", Flatten)
        .unwrap()
        .add_as("predictions", Dense::new(5))
        .unwrap()
        .build()
        .unwrap();
    let before = m
        .params()
        .tensor("bn.running_var")
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let e = layerlens::weights::load_weights(&m, fixture("tiny.weights.h5"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing keys: extra.bias, extra.weight"), "{e}");
    let after = m
        .params()
        .tensor("bn.running_var")
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(before, after, "a refused load changes nothing");

    // A kernel of the wrong geometry names the layer, the kernel and the convolution.
    let m = Sequential::new("wide", [3, 8, 8])
        .add_as("block1_conv1", Conv2d::new(8, 3).padding(Padding::Same))
        .unwrap()
        .add_as("bn", BatchNorm::new())
        .unwrap()
        .add_as("dw", Conv2d::new(8, 3).groups(8).padding(Padding::Same))
        .unwrap()
        .add_as("pool", Pool2d::max(4))
        .unwrap()
        .add_as("flatten", Flatten)
        .unwrap()
        .add_as("predictions", Dense::new(5))
        .unwrap()
        .build()
        .unwrap();
    let e = layerlens::weights::load_weights(&m, fixture("tiny.weights.h5"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dw: Keras kernel [3, 3, 4, 1] is neither a Conv2D nor a DepthwiseConv2D kernel for this convolution (8 -> 8 channels, groups 8)"),
        "{e}"
    );
}

/// The zoo's VGG16 with the weights of a real keras.applications VGG16 (seeded,
/// written by scripts/keras-applications.sh, which runs this test): every layer
/// against Keras' float64 result, within the tolerance of the Keras importer's
/// own test (1e-5 + 1e-4·|Keras| + twice Keras' own float32 error there). This
/// is the path `zoo:vgg16=imagenet` takes with Keras' published file.
#[test]
#[ignore = "needs the generated VGG16: scripts/keras-applications.sh vgg16"]
fn zoo_vgg16_with_keras_vgg16_weights_matches_keras_at_every_layer() {
    let dir = std::env::var_os("LAYERLENS_KERAS_APPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/layerlens/keras-applications")
        });
    let refs: std::collections::BTreeMap<String, Tensor> =
        layerlens::candle_core::safetensors::load(dir.join("vgg16_ref.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    let m = layerlens::zoo::vgg16(true, 1000).unwrap();
    let report = layerlens::weights::load_weights(&m, dir.join("vgg16.keras")).unwrap();
    assert_eq!(report.loaded, 32, "16 layers' kernels and biases");
    let nhwc = layerlens::keras::layout::nhwc_to_nchw;
    // Keras flattens channel-last, layerlens channel-first: the Flatten itself
    // differs in order by design, so it is the one layer not compared.
    let names: Vec<&str> = refs
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "input" && *k != "flatten" && !k.starts_with("f32_error:"))
        .collect();
    assert_eq!(names.len(), 21, "{names:?}");
    let acts = m.extract(&nhwc(&refs["input"]).unwrap(), &names).unwrap();
    for n in names {
        let want = nhwc(&refs[n]).unwrap();
        let keras_f32 = refs[&format!("f32_error:{n}")]
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = acts.get(n).unwrap();
        let (g, w): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(got.dims(), want.dims(), "{n}");
        let mut worst = 0f32;
        for (a, b) in g.iter().zip(&w) {
            let allowed = 1e-5 + 2.0 * keras_f32 + 1e-4 * b.abs();
            assert!((a - b).abs() <= allowed, "{n}: layerlens {a} vs Keras {b}");
            worst = worst.max((a - b).abs());
        }
        println!("{n}: max |diff| {worst:.2e} (Keras float32 {keras_f32:.2e})");
    }
}
