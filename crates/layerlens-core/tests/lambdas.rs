//! Lambdas, custom layers, weight references and activation gradients.

mod common;

use common::{assert_close, F32};
use layerlens_core::lambda::{LambdaCtx, ShapeCtx};
use layerlens_core::params::{Init, ParamKind, ParamSpec};
use layerlens_core::prelude::*;

fn conv_net() -> (Model, Tensor) {
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 10, 10]).unwrap();
    let c = g
        .add(
            Conv2d::new(3, 3)
                .padding(Padding::Same)
                .activation(Activation::Tanh),
            &[x],
        )
        .unwrap();
    let c2 = g
        .add(Conv2d::new(4, 3).activation(Activation::Tanh), &[c])
        .unwrap();
    let gap = g.add(GlobalAvgPool::default(), &[c2]).unwrap();
    let d = g.add_as("logits", Dense::new(5), &[gap]).unwrap();
    let m = g.build(&[d]).unwrap();
    let xs = Tensor::rand(-1f32, 1f32, (2, 3, 10, 10), &Device::Cpu).unwrap();
    (m, xs)
}

#[test]
fn builtin_reductions_have_exact_shapes_and_values() {
    let mut g = Functional::new("m");
    let x = g.input("input", [2, 3, 4]).unwrap();
    let mean = g.lambda(Reduce::mean([2, 3]), &[x], &[]).unwrap();
    let sum = g
        .lambda(Reduce::sum([-1]).keepdims(true), &[x], &[])
        .unwrap();
    let max = g.lambda(Reduce::max([1]), &[x], &[]).unwrap();
    assert_eq!(g.name(mean), "lambda");
    assert_eq!(g.name(sum), "lambda_1");
    assert_eq!(g.shape(mean), &Shape::new([2]));
    assert_eq!(g.shape(sum), &Shape::new([2, 3, 1]));
    assert_eq!(g.shape(max), &Shape::new([3, 4]));
    let e = g
        .lambda(Reduce::mean([0]), &[x], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch axis"), "{e}");
    let m = g.build(&[mean, sum, max]).unwrap();
    let t = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 3, 4))
        .unwrap();
    let out = m.forward(&[t]).unwrap();
    assert_eq!(out[0].to_vec2::<f32>().unwrap(), [[5.5, 17.5]]);
    assert_eq!(
        out[1].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [6., 22., 38., 54., 70., 86.]
    );
    assert_eq!(
        out[2].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        (12..24).map(|v| v as f32).collect::<Vec<_>>()
    );
}

#[test]
fn l2_normalize_of_zeros_is_zero_not_nan() {
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 2, 2]).unwrap();
    let n = g.lambda(L2Normalize::new(1), &[x], &[]).unwrap();
    let m = g.build(&[n]).unwrap();
    let mut v = vec![0f32; 12];
    v[0] = 3.0; // channel 0 at (0, 0)
    v[8] = 4.0; // channel 2 at (0, 0)
    let y = m
        .predict(&Tensor::from_vec(v, (1, 3, 2, 2), &Device::Cpu).unwrap())
        .unwrap();
    let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert!((y[0] - 0.6).abs() < 1e-6 && (y[8] - 0.8).abs() < 1e-6);
    assert!(y.iter().all(|v| v.is_finite()));
    assert_eq!(y[1], 0.0, "an all-zero channel vector stays zero");
}

#[test]
fn closure_lambdas_infer_shapes_by_tracing_and_report_failures_at_build() {
    let mut g = Functional::new("m");
    let x = g.input("input", [4, 6, 6]).unwrap();
    let sq = g
        .closure("square_pool", &[x], |xs| xs[0].sqr()?.avg_pool2d(2))
        .unwrap();
    assert_eq!(g.shape(sq), &Shape::new([4, 3, 3]));
    let e = g
        .closure("bad", &[x], |xs| xs[0].reshape((7, 7)))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad: Lambda 'bad' failed on inputs 'input' (N, 4, 6, 6)"),
        "{e}"
    );
    let e = g
        .closure("drops_batch", &[x], |xs| xs[0].sum_all())
        .unwrap_err()
        .to_string();
    assert!(e.contains("must keep the batch axis first"), "{e}");
}

#[test]
fn custom_layers_own_trainable_parameters() {
    #[derive(Debug)]
    struct ChannelScale;
    impl CustomOp for ChannelScale {
        fn type_name(&self) -> &str {
            "channel_scale"
        }
        fn base_name(&self) -> &str {
            "channel_scale"
        }
        fn param_specs(&self, inputs: &[Shape]) -> Result<Vec<ParamSpec>> {
            let c = inputs[0].dims()[0];
            Ok(vec![ParamSpec {
                name: "gamma".into(),
                shape: vec![1, c, 1, 1],
                kind: ParamKind::Trainable,
                init: Init::Ones,
            }])
        }
        fn output_shape(&self, ctx: &ShapeCtx) -> Option<Result<Shape>> {
            Some(Ok(ctx.input_shapes[0].clone()))
        }
        fn forward(&self, inputs: &[Tensor], ctx: &LambdaCtx) -> Result<Tensor> {
            Ok(inputs[0].broadcast_mul(&ctx.param("gamma")?)?)
        }
    }
    let mut g = Functional::new("m");
    let x = g.input("input", [2, 3, 3]).unwrap();
    let s = g.lambda(ChannelScale, &[x], &[]).unwrap();
    let m = g.build(&[s]).unwrap();
    assert!(m.params().contains("channel_scale.gamma"));
    let xs = Tensor::ones((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let acts = m
        .run(&[xs], &["channel_scale"], RunOptions::training())
        .unwrap();
    let grads = acts
        .get("channel_scale")
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = m.params().grads(&grads);
    assert_eq!(
        g["channel_scale.gamma"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [9.0, 9.0]
    );
}

#[test]
fn frozen_references_are_snapshots_and_live_references_follow_the_parameter() {
    let mut g = Functional::new("m");
    let x = g.input("input", [20]).unwrap();
    let d = g
        .add(Dense::new(10).activation(Activation::Relu), &[x])
        .unwrap();
    let frozen = g
        .lambda_as(
            "frozen",
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::frozen("dense.weight")],
        )
        .unwrap();
    let live = g
        .lambda_as(
            "live",
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::live("dense.weight")],
        )
        .unwrap();
    let e = g
        .lambda(
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::live("dense.kernel")],
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "unknown parameter (referenced by a Lambda) 'dense.kernel'; did you mean 'dense."
        ),
        "{e}"
    );
    let m = g.build(&[frozen, live]).unwrap();
    assert!(m.params().contains("frozen.frozen0"));

    let xs = Tensor::rand(0f32, 1f32, (3, 20), &Device::Cpu).unwrap();
    let out = m.forward(&[xs.clone()]).unwrap();
    assert_close(&out[0], &out[1], F32, "same value before training");
    // Change the weight (as an optimiser step would): frozen keeps its scale, live follows.
    let w = m.params().tensor("dense.weight").unwrap();
    let w0 = w
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    m.params().set("dense.weight", &(w * 2.0).unwrap()).unwrap();
    let acts = m.extract(&xs, &["dense", "frozen", "live"]).unwrap();
    let dense = acts.get("dense").unwrap();
    assert_close(
        acts.get("frozen").unwrap(),
        &(dense * w0 as f64).unwrap(),
        F32,
        "frozen uses the old element",
    );
    assert_close(
        acts.get("live").unwrap(),
        &(dense * (2.0 * w0) as f64).unwrap(),
        F32,
        "live uses the new element",
    );
    // Refreshing takes the snapshot again from the current weight.
    assert_eq!(
        m.frozen_snapshots(),
        vec![("frozen.frozen0".to_string(), "dense.weight".to_string())]
    );
    assert_eq!(m.refresh_frozen().unwrap(), vec!["frozen.frozen0"]);
    let acts = m.extract(&xs, &["frozen", "live"]).unwrap();
    assert_close(
        acts.get("frozen").unwrap(),
        acts.get("live").unwrap(),
        F32,
        "refreshed snapshot uses the new element",
    );
}

#[test]
fn live_kernel_reference_receives_gradients_through_both_uses() {
    // Seed 003 example 2 done right: a conv, then a Lambda convolving its output with
    // the same layer's kernel. The broken original (a 3-channel kernel on a
    // 32-channel map) is refused at build time with both sides named.
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 8, 8]).unwrap();
    let c = g
        .add(
            Conv2d::new(32, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu),
            &[x],
        )
        .unwrap();
    let e = g
        .lambda(
            Conv2dRef::new(Padding::Same),
            &[c],
            &[WeightRef::live("conv2d.weight")],
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "lambda: kernel 'conv2d.weight' [32, 3, 3, 3] expects 3 input channels (groups 1), but input 'conv2d' has 32 channels (shape (N, 32, 8, 8))"
    );

    let build = |mode: fn(&str) -> WeightRef| {
        let mut g = Functional::new("m").seed(7);
        let x = g.input("input", [3, 8, 8]).unwrap();
        let c = g
            .add(
                Conv2d::new(3, 3)
                    .padding(Padding::Same)
                    .activation(Activation::Relu),
                &[x],
            )
            .unwrap();
        let l = g
            .lambda(
                Conv2dRef::new(Padding::Same),
                &[c],
                &[mode("conv2d.weight")],
            )
            .unwrap();
        g.build(&[l]).unwrap()
    };
    let xs = Tensor::rand(-1f32, 1f32, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let grad_of = |m: &Model| {
        let acts = m
            .run(&[xs.clone()], &["lambda"], RunOptions::training())
            .unwrap();
        let loss = acts
            .get("lambda")
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let store = loss.backward().unwrap();
        m.params().grads(&store)
    };
    let live = grad_of(&build(|k| WeightRef::live(k)));
    let frozen = grad_of(&build(|k| WeightRef::frozen(k)));
    // Same seed, same weights, same forward values: the only difference is the
    // second path of the gradient into the kernel.
    let diff = (&live["conv2d.weight"] - &frozen["conv2d.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap() > 1e-4,
        "live adds the Lambda's gradient path"
    );
    assert_close(
        &live["conv2d.bias"],
        &frozen["conv2d.bias"],
        F32,
        "bias has one path either way",
    );
    assert!(
        !frozen.contains_key("lambda.frozen0"),
        "a frozen snapshot is a constant, never trained"
    );
}

#[test]
fn gradients_reach_taps_and_inputs_and_chain_through_other_taps() {
    let (m, xs) = conv_net();
    let class = 2;
    let score = |a: &Activations| Ok(a.get("logits")?.narrow(1, class, 1)?.sum_all()?);
    let alone = m
        .gradients(&[xs.clone()], &["logits"], &["conv2d"], Mode::Eval, score)
        .unwrap();
    let input_alone = m
        .gradients(&[xs.clone()], &["logits"], &["input"], Mode::Eval, score)
        .unwrap();
    // Cutting at a later tap as well must not change the earlier taps' gradients.
    let both = m
        .gradients(
            &[xs.clone()],
            &["logits"],
            &["input", "conv2d", "conv2d_1"],
            Mode::Eval,
            score,
        )
        .unwrap();
    assert_eq!(both.grads.names(), ["input", "conv2d", "conv2d_1"]);
    assert_close(
        both.grads.get("conv2d").unwrap(),
        alone.grads.get("conv2d").unwrap(),
        F32,
        "conv2d grad",
    );
    assert_close(
        both.grads.get("input").unwrap(),
        input_alone.grads.get("input").unwrap(),
        F32,
        "input grad",
    );
    assert_eq!(both.grads.get("conv2d_1").unwrap().dims(), &[2, 4, 8, 8]);

    // Finite differences on the input, in f64 arithmetic over the f32 model.
    let g = both
        .grads
        .get("input")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
    let f = |v: &[f32]| -> f64 {
        let t = Tensor::from_slice(v, xs.dims(), &Device::Cpu).unwrap();
        let y = m.predict(&t).unwrap();
        y.narrow(1, class, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    for &i in &[0usize, 17, 150, 333, 599] {
        let h = 1e-2f32;
        let mut p = base.clone();
        p[i] += h;
        let mut q = base.clone();
        q[i] -= h;
        let fd = (f(&p) - f(&q)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(),
            "d/dx[{i}]: finite difference {fd}, autograd {}",
            g[i]
        );
    }

    // A non-scalar objective is refused.
    let e = m
        .gradients(&[xs], &["logits"], &["conv2d"], Mode::Eval, |a| {
            Ok(a.get("logits")?.clone())
        })
        .unwrap_err();
    assert!(e.to_string().contains("must return one element"), "{e}");
}

#[test]
fn gradients_answer_by_the_names_asked_including_aliases() {
    let (m, xs) = conv_net();
    // Re-build with an alias on the second convolution.
    let mut g = Functional::extend(&m);
    let c = g.get("conv2d_1").unwrap();
    g.alias("features", c).unwrap();
    let logits = g.get("logits").unwrap();
    let m2 = g.build(&[logits]).unwrap();
    let by_alias = m2
        .gradients(&[xs.clone()], &["logits"], &["features"], Mode::Eval, |a| {
            Ok(a.get("logits")?.narrow(1, 0, 1)?.sum_all()?)
        })
        .unwrap();
    let by_name = m2
        .gradients(&[xs], &["logits"], &["conv2d_1"], Mode::Eval, |a| {
            Ok(a.get("logits")?.narrow(1, 0, 1)?.sum_all()?)
        })
        .unwrap();
    assert_eq!(by_alias.grads.names(), ["features"]);
    assert_eq!(by_alias.values.names(), ["logits", "features"]);
    assert_close(
        by_alias.grads.get("features").unwrap(),
        by_name.grads.get("conv2d_1").unwrap(),
        F32,
        "same node",
    );
}
