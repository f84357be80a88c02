//! One training step of seed 002's custom loss against PyTorch
//! (fixtures/gen_train_step.py): loss, every gradient, and the weights after
//! Adam, SGD (momentum, Nesterov, weight decay) and AdamW steps, within 1e-4.

use candle_core::{DType, Device, Tensor};
use layerlens_core::{Model, RunOptions};
use layerlens_train::loss::{Loss, Targets};
use layerlens_train::optim::{Adam, Optimizer, Sgd};
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/train_step.safetensors"
    );
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn seed_cnn(fx: &HashMap<String, Tensor>) -> Model {
    let m = layerlens_core::zoo::seed_cnn(false).unwrap();
    for (k, _) in m.params().iter() {
        m.params().set(k, &fx[&format!("init.{k}")]).unwrap();
    }
    m
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn check_params(m: &Model, fx: &HashMap<String, Tensor>, prefix: &str) {
    for (k, p) in m.params().iter() {
        let d = max_diff(&p.var.as_detached_tensor(), &fx[&format!("{prefix}.{k}")]);
        assert!(d < TOL, "{prefix}.{k}: max |diff| {d}");
    }
}

fn loss() -> Loss {
    Loss::cross_entropy("dense") + 0.1 * Loss::mean_square("conv2d")
}

fn step(
    m: &Model,
    fx: &HashMap<String, Tensor>,
    opt: &mut dyn Optimizer,
) -> (f32, std::collections::BTreeMap<String, Tensor>) {
    let y = fx["y"].to_dtype(DType::U32).unwrap();
    let acts = m
        .run(&[fx["x"].clone()], &loss().taps(), RunOptions::training())
        .unwrap();
    let (total, _) = loss()
        .compute(
            &acts,
            Targets {
                labels: Some(&y),
                values: None,
            },
        )
        .unwrap();
    let grads = m.params().grads(&total.backward().unwrap());
    opt.step(&grads).unwrap();
    (total.to_scalar::<f32>().unwrap(), grads)
}

#[test]
fn seed_002_custom_loss_step_matches_pytorch_with_adam() {
    let fx = fixture();
    let m = seed_cnn(&fx);
    let mut opt = Adam::new(m.params(), 1e-3);
    let (l, grads) = step(&m, &fx, &mut opt);
    let want = fx["loss"].to_vec1::<f32>().unwrap()[0];
    assert!((l - want).abs() < TOL, "loss {l} vs PyTorch {want}");
    assert_eq!(grads.len(), 6, "every parameter has a gradient");
    for (k, g) in &grads {
        let d = max_diff(g, &fx[&format!("grad.{k}")]);
        assert!(d < TOL, "grad {k}: max |diff| {d}");
    }
    check_params(&m, &fx, "adam1");
    step(&m, &fx, &mut opt);
    check_params(&m, &fx, "adam2");
}

#[test]
fn sgd_momentum_nesterov_and_adamw_match_pytorch() {
    let fx = fixture();
    let m = seed_cnn(&fx);
    let mut sgd = Sgd::new(m.params(), 0.05)
        .momentum(0.9)
        .weight_decay(5e-4)
        .nesterov(true);
    step(&m, &fx, &mut sgd);
    step(&m, &fx, &mut sgd);
    check_params(&m, &fx, "sgd2");

    let m = seed_cnn(&fx);
    let mut adamw = Adam::adamw(m.params(), 1e-3);
    step(&m, &fx, &mut adamw);
    step(&m, &fx, &mut adamw);
    check_params(&m, &fx, "adamw2");
}

#[test]
fn optimiser_state_and_gradients_hold_no_autograd_graph() {
    // candle returns parameter gradients still attached to the forward graph; if an
    // optimiser kept them, every step's graph would stay alive (a real leak of
    // ~165 MB/s on Fashion-MNIST before this was fixed).
    let fx = fixture();
    let m = seed_cnn(&fx);
    let mut opt = Adam::new(m.params(), 1e-3);
    let (_, grads) = step(&m, &fx, &mut opt);
    step(&m, &fx, &mut opt);
    assert!(
        grads.values().all(|g| !g.track_op()),
        "gradients are detached"
    );
    assert!(
        opt.state().unwrap().values().all(|t| !t.track_op()),
        "Adam state is detached"
    );
    let mut sgd = Sgd::new(m.params(), 0.01).momentum(0.9);
    step(&m, &fx, &mut sgd);
    assert!(
        sgd.state().unwrap().values().all(|t| !t.track_op()),
        "SGD momentum is detached"
    );
}
