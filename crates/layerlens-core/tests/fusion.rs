//! Inference plans fuse `conv → batch norm → add → ReLU` chains into one kernel
//! call; the fused plan must give what the node-by-node plan gives, and must
//! step aside whenever an intermediate is observed (requested, hooked, or a
//! gradient is asked for).

use candle_core::{Device, Tensor};
use layerlens_core::prelude::*;

/// A ResNet basic block with a projection shortcut, then a plain conv-bn-relu6.
fn block() -> Model {
    let mut g = Functional::new("block");
    let x = g.input("input", [4, 9, 9]).unwrap();
    let c1 = g
        .add_as(
            "conv1",
            Conv2d::new(6, 3).padding(Padding::symmetric(1)).bias(false),
            &[x],
        )
        .unwrap();
    let b1 = g.add_as("bn1", BatchNorm::new(), &[c1]).unwrap();
    let r1 = g.add_as("relu1", Activation::Relu, &[b1]).unwrap();
    let c2 = g
        .add_as(
            "conv2",
            Conv2d::new(6, 3).padding(Padding::symmetric(1)),
            &[r1],
        )
        .unwrap();
    let b2 = g.add_as("bn2", BatchNorm::new(), &[c2]).unwrap();
    let sc = g.add_as("shortcut", Conv2d::new(6, 1), &[x]).unwrap();
    let sum = g.add_as("add", Add, &[b2, sc]).unwrap();
    let r2 = g.add_as("relu2", Activation::Relu, &[sum]).unwrap();
    let c3 = g
        .add_as("conv3", Conv2d::new(5, 3).stride(2), &[r2])
        .unwrap();
    let b3 = g.add_as("bn3", BatchNorm::new(), &[c3]).unwrap();
    let r3 = g.add_as("relu3", Activation::Relu6, &[b3]).unwrap();
    let model = g.build(&[r3]).unwrap();
    // Non-trivial running statistics, scales and shifts.
    for (key, p) in model.params().iter().filter(|(k, _)| k.starts_with("bn")) {
        let dims = p.var.as_tensor().dims().to_vec();
        let v = Tensor::rand(0.5f32, 1.5f32, dims.as_slice(), &Device::Cpu).unwrap();
        let v = if key.ends_with("running_mean") || key.ends_with(".bias") {
            (v - 1.0).unwrap()
        } else {
            v
        };
        model.params().set(key, &v).unwrap();
    }
    model
}

/// Largest difference relative to the reference's largest magnitude.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let m = |t: Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
    m((a - b).unwrap()) / m(b.clone()).max(1e-6)
}

#[test]
fn fused_inference_matches_node_by_node() {
    let model = block();
    let x = Tensor::randn(0f32, 1f32, (3, 4, 9, 9), &Device::Cpu).unwrap();
    let fused = model.forward(&[x.clone()]).unwrap().remove(0);
    // Tracking parameters disables fusion: the node-by-node reference.
    let opts = RunOptions {
        mode: Mode::Eval,
        track_params: true,
    };
    let plain = model.run(&[x.clone()], &["relu3"], opts).unwrap();
    let d = max_diff(&fused, plain.get("relu3").unwrap());
    assert!(d < 1e-5, "fused vs plain: {d}");
    // input, conv1+bn1+relu1, shortcut, conv2+bn2+add+relu2, conv3+bn3+relu6.
    let plan = model.plan(&["relu3"]).unwrap();
    assert_eq!((plan.steps().len(), plan.inference_steps()), (12, 5));
}

#[test]
fn requested_and_hooked_intermediates_are_still_exact() {
    let model = block();
    let x = Tensor::randn(0f32, 1f32, (2, 4, 9, 9), &Device::Cpu).unwrap();
    let opts = RunOptions {
        mode: Mode::Eval,
        track_params: true,
    };
    let want = model
        .run(&[x.clone()], &["bn2", "add", "relu2", "relu3"], opts)
        .unwrap();
    // Requesting intermediates breaks their chains exactly there.
    let got = model
        .extract(&x, &["bn2", "add", "relu2", "relu3"])
        .unwrap();
    for n in ["bn2", "add", "relu2", "relu3"] {
        let d = max_diff(got.get(n).unwrap(), want.get(n).unwrap());
        assert!(d < 1e-5, "{n}: {d}");
    }
    // A hook on an absorbed node sees its value (the plan runs unfused).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let _h = model
        .register_forward_hook("bn1", move |_, y| {
            *s.lock().unwrap() = Some(y.clone());
            Ok(None)
        })
        .unwrap();
    let out = model.forward(&[x.clone()]).unwrap().remove(0);
    assert!(max_diff(&out, want.get("relu3").unwrap()) < 1e-5);
    let bn1 = model.run(&[x], &["bn1"], opts).unwrap();
    let hooked = seen.lock().unwrap().clone().expect("hook fired");
    assert!(max_diff(&hooked, bn1.get("bn1").unwrap()) < 1e-5);
}
