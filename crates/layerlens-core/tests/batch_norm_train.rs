//! Training-mode batch norm (output, input gradient, weight and bias gradients,
//! running statistics) against PyTorch autograd in float64
//! (tests/fixtures/batch_norm/gen_bn_grads.py), through the model API, on both
//! CPU paths: layerlens' kernel (`KernelPath::Fast`) on every instruction-set path
//! the CPU supports, and the composed candle ops (`KernelPath::Candle`). Shapes: `(N, C)`, `(N, C, H, W)` with `N = 1` and with
//! `H·W = 1`, odd sizes, no affine parameters, PyTorch and Keras eps/momentum, a
//! channel mean far from 0.
//!
//! Tolerances: `common::F32` (atol 1e-5, rtol 1e-4) for the output and running
//! statistics; `GRAD` (atol 1e-4, rtol 1e-4) for the gradients, which are sums
//! over up to 2048 values per channel in float32.

mod common;

use candle_core::Var;
use common::{assert_close, fixture, Tol, F32};
use layerlens_core::kernels;
use layerlens_core::prelude::*;
use std::collections::HashMap;

const GRAD: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};

struct Case<'a> {
    fx: &'a HashMap<String, Tensor>,
    name: String,
}

impl Case<'_> {
    fn get(&self, k: &str) -> Tensor {
        self.fx
            .get(&format!("{}/{k}", self.name))
            .unwrap_or_else(|| panic!("{}/{k} missing", self.name))
            .clone()
    }

    fn config(&self) -> (f64, f64, bool) {
        let c: Vec<f64> = self.get("config").to_vec1().unwrap();
        (c[0], c[1], c[2] != 0.0)
    }

    /// `input -> bn` with the case's parameters and initial running statistics.
    fn model(&self) -> Model {
        let (eps, momentum, affine) = self.config();
        let x = self.get("x");
        let mut g = Functional::new(&self.name);
        let i = g.input("input", Shape::from_tensor_dims(x.dims())).unwrap();
        let mut bn = BatchNorm::new().eps(eps).momentum(momentum);
        bn.affine = affine;
        let y = g.add_as("bn", bn, &[i]).unwrap();
        let model = g.build(&[y]).unwrap();
        let p = model.params();
        p.set("bn.running_mean", &self.get("running_mean0"))
            .unwrap();
        p.set("bn.running_var", &self.get("running_var0")).unwrap();
        if affine {
            p.set("bn.weight", &self.get("weight")).unwrap();
            p.set("bn.bias", &self.get("bias")).unwrap();
        }
        model
    }
}

fn cases(fx: &HashMap<String, Tensor>) -> Vec<Case<'_>> {
    let mut names: Vec<&str> = fx
        .keys()
        .filter_map(|k| k.strip_suffix("/config"))
        .collect();
    names.sort();
    assert!(names.len() >= 11, "fixture has {} cases", names.len());
    names
        .into_iter()
        .map(|n| Case {
            fx,
            name: n.to_string(),
        })
        .collect()
}

/// One training forward with `<y, dy>` as the loss, then backward: the output,
/// the gradients (input, then weight and bias when affine) and the model.
fn train_step(c: &Case) -> (Tensor, Vec<Tensor>, Model) {
    let model = c.model();
    let x = Var::from_tensor(&c.get("x")).unwrap();
    let out = model
        .run(&[x.as_tensor().clone()], &["bn"], RunOptions::training())
        .unwrap();
    let y = out.get("bn").unwrap().clone();
    let store = (&y * &c.get("dy"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut grads = vec![store.get(x.as_tensor()).expect("dx").clone()];
    let params = model.params().grads(&store);
    if c.config().2 {
        grads.push(params["bn.weight"].clone());
        grads.push(params["bn.bias"].clone());
    } else {
        assert!(params.is_empty());
    }
    (y.detach(), grads, model)
}

fn check_running_stats(c: &Case, model: &Model, what: &str) {
    for k in ["running_mean", "running_var"] {
        assert_close(
            &model.params().tensor(&format!("bn.{k}")).unwrap(),
            &c.get(k),
            F32,
            &format!("{what} {k}"),
        );
    }
}

#[test]
fn every_cpu_path_matches_pytorch_output_gradients_and_running_stats() {
    let fx = fixture("batch_norm/bn_grads.safetensors");
    for path in kernels::cpu_paths() {
        for c in cases(&fx) {
            let what = format!("{path} {}", c.name);
            let (y, grads, model) = kernels::with_cpu_path(path, || train_step(&c));
            assert_close(&y, &c.get("y"), F32, &format!("{what} y"));
            let names = ["dx", "dweight", "dbias"];
            for (g, k) in grads.iter().zip(names) {
                assert_close(g, &c.get(k), GRAD, &format!("{what} {k}"));
            }
            check_running_stats(&c, &model, &what);
        }
    }
}

/// Without tracked parameters (plain training-mode forward) the kernel runs
/// without recording a backward and gives the same output and statistics.
#[test]
fn untracked_training_forward_matches_pytorch() {
    let fx = fixture("batch_norm/bn_grads.safetensors");
    for c in cases(&fx) {
        let model = c.model();
        let opts = RunOptions {
            mode: Mode::Train,
            track_params: false,
        };
        let out = model.run(&[c.get("x")], &["bn"], opts).unwrap();
        let y = out.get("bn").unwrap();
        assert!(!y.track_op(), "{}", c.name);
        assert_close(y, &c.get("y"), F32, &c.name);
        check_running_stats(&c, &model, &c.name);
    }
}

/// Only the input tracked (`Model::gradients` in training mode, e.g. a saliency
/// map through a network in train mode), and only the parameters tracked (the
/// first layer of a network fed raw inputs).
#[test]
fn partial_tracking_gives_the_tracked_gradients() {
    let fx = fixture("batch_norm/bn_grads.safetensors");
    for c in cases(&fx) {
        let model = c.model();
        let dy = c.get("dy");
        let g = model
            .gradients(&[c.get("x")], &["bn"], &["input"], Mode::Train, |a| {
                Ok((a.get("bn")? * &dy)?.sum_all()?)
            })
            .unwrap();
        assert_close(g.grads.get("input").unwrap(), &c.get("dx"), GRAD, &c.name);
        if !c.config().2 {
            continue;
        }
        let model = c.model();
        let out = model
            .run(&[c.get("x")], &["bn"], RunOptions::training())
            .unwrap();
        let store = (out.get("bn").unwrap() * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let params = model.params().grads(&store);
        assert_eq!(params.len(), 2, "{}", c.name);
        assert_close(&params["bn.weight"], &c.get("dweight"), GRAD, &c.name);
        assert_close(&params["bn.bias"], &c.get("dbias"), GRAD, &c.name);
    }
}

/// The kernel's fused ReLU against the plain kernel followed by candle's ReLU.
#[test]
fn fused_relu_matches_batch_norm_then_relu() {
    let fx = fixture("batch_norm/bn_grads.safetensors");
    for c in cases(&fx) {
        let (eps, _, affine) = c.config();
        let run = |fused: bool| -> candle_core::Result<Vec<Tensor>> {
            let x = Var::from_tensor(&c.get("x"))?;
            let (w, b) = if affine {
                (
                    Var::from_tensor(&c.get("weight"))?,
                    Var::from_tensor(&c.get("bias"))?,
                )
            } else {
                let ones = Var::ones(c.get("x").dim(1)?, candle_core::DType::F32, x.device())?;
                (ones.clone(), ones)
            };
            let wb = affine.then_some((w.as_tensor(), b.as_tensor()));
            let (y, _) = kernels::batch_norm_train(x.as_tensor(), wb, eps, fused).unwrap()?;
            let y = if fused { y } else { y.relu()? };
            let store = (&y * &c.get("dy"))?.sum_all()?.backward()?;
            let mut out = vec![y.detach(), store.get(x.as_tensor()).unwrap().clone()];
            if affine {
                out.push(store.get(w.as_tensor()).unwrap().clone());
                out.push(store.get(b.as_tensor()).unwrap().clone());
            }
            Ok(out)
        };
        let (fused, plain) = (run(true).unwrap(), run(false).unwrap());
        for (i, k) in ["y", "dx", "dweight", "dbias"]
            .iter()
            .enumerate()
            .take(fused.len())
        {
            let tol = if i == 0 { F32 } else { GRAD };
            assert_close(&fused[i], &plain[i], tol, &format!("{} {k}", c.name));
        }
    }
}

#[test]
fn evaluation_mode_uses_and_keeps_the_running_statistics() {
    let fx = fixture("batch_norm/bn_grads.safetensors");
    let c = &cases(&fx)[0];
    let model = c.model();
    let x = c.get("x");
    let y = model
        .extract(&x, &["bn"])
        .unwrap()
        .get("bn")
        .unwrap()
        .clone();
    // (x - running_mean) / sqrt(running_var + eps) · weight + bias, by hand.
    let (eps, _, _) = c.config();
    let dims = x.dims().to_vec();
    let per_channel = |t: Tensor| {
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        t.reshape(shape).unwrap()
    };
    let want = x
        .broadcast_sub(&per_channel(c.get("running_mean0")))
        .unwrap()
        .broadcast_div(&per_channel(
            ((c.get("running_var0") + eps).unwrap()).sqrt().unwrap(),
        ))
        .unwrap();
    let want = if c.config().2 {
        want.broadcast_mul(&per_channel(c.get("weight")))
            .unwrap()
            .broadcast_add(&per_channel(c.get("bias")))
            .unwrap()
    } else {
        want
    };
    assert_close(&y, &want, F32, "eval");
    assert_close(
        &model.params().tensor("bn.running_mean").unwrap(),
        &c.get("running_mean0"),
        Tol {
            atol: 0.0,
            rtol: 0.0,
        },
        "eval keeps running_mean",
    );
}

#[test]
fn an_empty_batch_is_an_error_not_a_panic() {
    let x = Tensor::zeros(
        (0, 3, 2, 2),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let e = kernels::batch_norm_train(&x, None, 1e-5, false)
        .expect("CPU f32")
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one value per channel"), "{e}");
}
