//! Every built-in op against PyTorch goldens (tests/fixtures/ops/gen_ops.py),
//! tolerance `common::F32` (atol 1e-5, rtol 1e-4).

mod common;

use common::{assert_close, fixture, F32};
use layerlens_core::kernels::{cpu_paths, with_cpu_path};
use layerlens_core::ops::PoolKind;
use layerlens_core::prelude::*;
use std::collections::HashMap;

struct Case<'a> {
    fx: &'a HashMap<String, Tensor>,
    name: &'a str,
}

impl Case<'_> {
    fn get(&self, k: &str) -> Tensor {
        self.fx
            .get(&format!("{}/{k}", self.name))
            .unwrap_or_else(|| panic!("{}/{k} missing", self.name))
            .clone()
    }

    /// Builds `input -> layer` named `node`, loads the case's params, runs it and compares.
    fn check(&self, node: &str, layer: impl Into<layerlens_core::ir::Op>, mode: Mode) -> Model {
        let x = self.get("x");
        let mut g = Functional::new(self.name);
        let i = g.input("input", Shape::from_tensor_dims(x.dims())).unwrap();
        let y = g.add_as(node, layer, &[i]).unwrap();
        let model = g.build(&[y]).unwrap();
        let prefix = format!("{}/param/", self.name);
        for (k, t) in self.fx.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            model.params().set(&k[prefix.len()..], t).unwrap();
        }
        let opts = RunOptions {
            mode,
            track_params: false,
        };
        let got = model.run(&[x], &[node], opts).unwrap();
        assert_close(got.get(node).unwrap(), &self.get("y"), F32, self.name);
        model
    }
}

#[test]
fn convolutions_match_pytorch() {
    for path in cpu_paths() {
        with_cpu_path(path, convolution_cases);
    }
}

fn convolution_cases() {
    let fx = fixture("ops/ops.safetensors");
    let c = |name| Case { fx: &fx, name };
    c("conv_basic").check("conv", Conv2d::new(5, 3), Mode::Eval);
    c("conv_stride2_pad1").check(
        "conv",
        Conv2d::new(4, 3).stride(2).padding(Padding::symmetric(1)),
        Mode::Eval,
    );
    c("conv_dilation2").check(
        "conv",
        Conv2d::new(3, 3).dilation(2).padding(Padding::symmetric(2)),
        Mode::Eval,
    );
    c("conv_groups").check(
        "conv",
        Conv2d::new(6, 3).groups(2).padding(Padding::symmetric(1)),
        Mode::Eval,
    );
    c("conv_depthwise").check(
        "conv",
        Conv2d::new(4, 3).groups(4).padding(Padding::symmetric(1)),
        Mode::Eval,
    );
    c("conv_1x1").check("conv", Conv2d::new(3, 1), Mode::Eval);
    c("conv_same_even").check("conv", Conv2d::new(2, 4).padding(Padding::Same), Mode::Eval);
    c("conv_rect_kernel").check("conv", Conv2d::new(3, 1).kernel_hw(1, 3), Mode::Eval);
    c("conv_same_stride2").check(
        "conv",
        Conv2d::new(4, 3).stride(2).padding(Padding::Same),
        Mode::Eval,
    );
}

#[test]
fn batch_norm_eval_and_train_match_pytorch() {
    let fx = fixture("ops/ops.safetensors");
    Case {
        fx: &fx,
        name: "bn_eval",
    }
    .check("bn", BatchNorm::new(), Mode::Eval);
    let case = Case {
        fx: &fx,
        name: "bn_train",
    };
    let model = case.check("bn", BatchNorm::new(), Mode::Train);
    // Training mode updated the running statistics exactly as PyTorch did.
    assert_close(
        &model.params().tensor("bn.running_mean").unwrap(),
        &case.get("running_mean"),
        F32,
        "running_mean",
    );
    assert_close(
        &model.params().tensor("bn.running_var").unwrap(),
        &case.get("running_var"),
        F32,
        "running_var",
    );
    // Evaluation mode never touches them.
    let before = model
        .params()
        .tensor("bn.running_mean")
        .unwrap()
        .copy()
        .unwrap();
    model.extract(&case.get("x"), &["bn"]).unwrap();
    assert_close(
        &model.params().tensor("bn.running_mean").unwrap(),
        &before,
        F32,
        "eval keeps running_mean",
    );
}

#[test]
fn pooling_matches_pytorch() {
    for path in cpu_paths() {
        with_cpu_path(path, pooling_cases);
    }
}

fn pooling_cases() {
    let fx = fixture("ops/ops.safetensors");
    let c = |name| Case { fx: &fx, name };
    c("maxpool_2").check("pool", Pool2d::max(2), Mode::Eval);
    c("maxpool_3s2p1").check(
        "pool",
        Pool2d::max(3).stride(2).padding(Padding::symmetric(1)),
        Mode::Eval,
    );
    c("avgpool_2").check("pool", Pool2d::avg(2), Mode::Eval);
    let p = Pool2d::new(PoolKind::Avg, [3, 3])
        .stride(2)
        .padding(Padding::symmetric(1));
    c("avgpool_3s2p1_incl").check("pool", p.clone(), Mode::Eval);
    c("avgpool_3s2p1_excl").check("pool", p.count_include_pad(false), Mode::Eval);
    c("gap").check("pool", GlobalAvgPool { keepdims: true }, Mode::Eval);
}

#[test]
fn activations_and_dense_match_pytorch() {
    let fx = fixture("ops/ops.safetensors");
    let c = |name| Case { fx: &fx, name };
    c("relu").check("act", Activation::Relu, Mode::Eval);
    c("relu6").check("act", Activation::Relu6, Mode::Eval);
    c("tanh").check("act", Activation::Tanh, Mode::Eval);
    c("sigmoid").check("act", Activation::Sigmoid, Mode::Eval);
    c("hardswish").check("act", Activation::HardSwish, Mode::Eval);
    c("hardsigmoid").check("act", Activation::HardSigmoid, Mode::Eval);
    c("leaky_relu").check("act", Activation::LeakyRelu { slope: 0.1 }, Mode::Eval);
    c("softmax_c").check("act", Activation::Softmax { axis: 1 }, Mode::Eval);
    c("dense").check("fc", Dense::new(4), Mode::Eval);
}

/// Both CPU paths: layerlens' pooling kernels, and candle's pooling with
/// layerlens' workarounds for its backward (still what runs on CUDA).
#[test]
fn pooling_gradients_match_pytorch() {
    for path in cpu_paths() {
        with_cpu_path(path, pooling_gradient_cases);
    }
}

fn pooling_gradient_cases() {
    let fx = fixture("ops/ops.safetensors");
    let cases: [(&str, Pool2d); 4] = [
        ("grad_maxpool_2", Pool2d::max(2)),
        (
            "grad_maxpool_3s2p1",
            Pool2d::max(3).stride(2).padding(Padding::symmetric(1)),
        ),
        ("grad_avgpool_2", Pool2d::avg(2)),
        (
            "grad_avgpool_3s2p1_excl",
            Pool2d::avg(3)
                .stride(2)
                .padding(Padding::symmetric(1))
                .count_include_pad(false),
        ),
    ];
    for (name, pool) in cases {
        let c = Case { fx: &fx, name };
        let x = c.get("x");
        let r = c.get("r");
        let mut g = Functional::new(name);
        let i = g.input("input", Shape::from_tensor_dims(x.dims())).unwrap();
        let p = g.add_as("pool", pool, &[i]).unwrap();
        let model = g.build(&[p]).unwrap();
        let grads = model
            .gradients(&[x], &["pool"], &["input"], Mode::Eval, |a| {
                Ok((a.get("pool")? * &r)?.sum_all()?)
            })
            .unwrap();
        assert_close(grads.grads.get("input").unwrap(), &c.get("dx"), F32, name);
    }
}
