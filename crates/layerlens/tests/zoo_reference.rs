//! The zoo's ResNet-18 against torchvision (forward hooks on `layer1.1` and
//! `layer3.1`, eval and train mode, as in seed 002 example 2) and VGG16 against
//! Keras (taps by Keras layer name, weights converted HWIO -> OIHW), on the
//! deterministic weights of tests/fixtures/gen_resnet_vgg.py. Tolerance: 1e-4
//! relative to the largest magnitude of each compared tensor.

use layerlens::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod common;
use common::{synth, synth_input};

fn fill(m: &Model) {
    for (k, p) in m.params().iter() {
        m.params().set(k, &synth(k, p.var.dims())).unwrap();
    }
}

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/zoo_reference.safetensors"
    );
    layerlens::candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn assert_rel(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-6);
    let d = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= 1e-4 * scale, "{what}: max |diff| {d}, scale {scale}");
}

#[test]
fn resnet18_hooks_match_torchvision_in_eval_and_train_mode() {
    let fx = fixture();
    let m = layerlens::zoo::resnet18(1000).unwrap();
    let x = synth_input(&[2, 3, 224, 224]);
    let seen: Arc<Mutex<HashMap<String, Tensor>>> = Arc::default();
    let mut handles = Vec::new();
    for name in ["layer1.1", "layer3.1"] {
        let s = seen.clone();
        let n = name.to_string();
        handles.push(
            m.register_forward_hook(name, move |_, t| {
                s.lock().unwrap().insert(n.clone(), t.clone());
                Ok(None)
            })
            .unwrap(),
        );
    }
    for (mode, run_mode) in [("eval", Mode::Eval), ("train", Mode::Train)] {
        fill(&m);
        seen.lock().unwrap().clear();
        let out = m
            .run(
                &[x.clone()],
                &["fc"],
                RunOptions {
                    mode: run_mode,
                    track_params: false,
                },
            )
            .unwrap();
        let acts = seen.lock().unwrap();
        assert_rel(
            &acts["layer1.1"].narrow(1, 0, 2).unwrap(),
            &fx[&format!("resnet/{mode}/layer1.1")],
            &format!("{mode} layer1.1"),
        );
        assert_rel(
            &acts["layer3.1"].narrow(1, 0, 8).unwrap(),
            &fx[&format!("resnet/{mode}/layer3.1")],
            &format!("{mode} layer3.1"),
        );
        assert_rel(
            out.get("fc").unwrap(),
            &fx[&format!("resnet/{mode}/fc")],
            &format!("{mode} fc"),
        );
        assert_rel(
            &m.params().tensor("layer2.1.bn2.running_var").unwrap(),
            &fx[&format!("resnet/{mode}/layer2.1.bn2.running_var")],
            &format!("{mode} running_var"),
        );
    }
}

#[test]
fn vgg16_taps_by_keras_names_match_keras() {
    let fx = fixture();
    let m = layerlens::zoo::vgg16(false, 1000).unwrap();
    fill(&m);
    let x = synth_input(&[1, 3, 224, 224]);
    let acts = m
        .extract(&x, &["block1_conv2", "block3_conv3", "block5_conv3"])
        .unwrap();
    for n in ["block1_conv2", "block3_conv3"] {
        let got = acts
            .get(n)
            .unwrap()
            .narrow(1, 0, 4)
            .unwrap()
            .narrow(2, 0, 32)
            .unwrap()
            .narrow(3, 0, 32)
            .unwrap();
        assert_rel(&got, &fx[&format!("vgg/{n}")], n);
    }
    let got = acts.get("block5_conv3").unwrap().narrow(1, 0, 4).unwrap();
    assert_rel(&got, &fx["vgg/block5_conv3"], "block5_conv3");
}
