//! The Keras seed examples (shared/seeds 000 ex 1-3, 001 ex 1-3, 003 ex 1-3,
//! 004 ex 2) rebuilt in layerlens and compared with references computed by real
//! Keras 3.15.1 / TensorFlow 2.21 (tests/fixtures/seeds/gen_seeds.py), plus
//! Grad-CAM gradients of the seed CNN against `tf.GradientTape`. Where a snippet
//! is broken as written, the test checks the build-time error a user gets and
//! then reproduces what the snippet meant.
//!
//! Tolerance: `|got - want| <= atol + rtol * |want|` element-wise with
//! atol 1e-5, rtol 1e-4 (both sides compute in float32; only the summation
//! order differs). Every comparison prints its max absolute difference (run with
//! `--nocapture` to see them).

use layerlens_core::candle_core;
use layerlens_core::ops::PoolKind;
use layerlens_core::prelude::*;
use layerlens_core::ParamStore;
use std::collections::HashMap;

/// Element-wise tolerance.
#[derive(Clone, Copy, Debug)]
struct Tol {
    atol: f32,
    rtol: f32,
}

/// float32 against float32 from Keras.
const TOL: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-4,
};

fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (k, &d) in dims.iter().enumerate().rev() {
        idx[k] = i % d;
        i /= d;
    }
    idx
}

/// Asserts equal shapes and `|got - want| <= atol + rtol * |want|` everywhere,
/// no NaN or infinity; reports the worst element by index. Returns the max
/// absolute difference.
fn assert_close(got: &Tensor, want: &Tensor, tol: Tol, what: &str) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let (mut max_abs, mut at_abs) = (0f32, 0usize);
    let (mut worst, mut at) = (f32::NEG_INFINITY, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            a.is_finite(),
            "{what}: non-finite {a} at {:?}",
            unravel(i, got.dims())
        );
        let d = (a - b).abs();
        if d > max_abs {
            (max_abs, at_abs) = (d, i);
        }
        let excess = d - (tol.atol + tol.rtol * b.abs());
        if excess > worst {
            (worst, at) = (excess, i);
        }
    }
    eprintln!(
        "{what}: max |diff| = {max_abs:.3e} at {:?} ({} values)",
        unravel(at_abs, got.dims()),
        g.len()
    );
    assert!(
        worst <= 0.0,
        "{what}: at {:?} got {} but Keras has {} (|diff| {:.3e}, tolerance {tol:?})",
        unravel(at, got.dims()),
        g[at],
        w[at],
        (g[at] - w[at]).abs()
    );
    max_abs
}

/// One fixture file of tests/fixtures/seeds.
struct Fx {
    file: &'static str,
    map: HashMap<String, Tensor>,
}

impl Fx {
    fn load(file: &'static str) -> Fx {
        let path = format!("{}/tests/fixtures/seeds/{file}", env!("CARGO_MANIFEST_DIR"));
        let map = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("loading {path}: {e}"));
        Fx { file, map }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("{} has no tensor '{key}'", self.file))
    }

    /// Sets every `param/<key>` of the fixture into `params`, renaming layers by
    /// `rename` (`[("dense", "dense_logits")]`).
    fn set_params_renamed(&self, params: &ParamStore, rename: &[(&str, &str)]) {
        let mut n = 0;
        for (k, t) in &self.map {
            let Some(key) = k.strip_prefix("param/") else {
                continue;
            };
            let key = match key.split_once('.') {
                Some((layer, p)) => match rename.iter().find(|(from, _)| *from == layer) {
                    Some((_, to)) => format!("{to}.{p}"),
                    None => key.to_string(),
                },
                None => key.to_string(),
            };
            params
                .set(&key, t)
                .unwrap_or_else(|e| panic!("{}: {e}", self.file));
            n += 1;
        }
        assert!(n > 0, "{} has no parameters", self.file);
    }

    fn set_params(&self, params: &ParamStore) {
        self.set_params_renamed(params, &[]);
    }
}

fn node_names(m: &Model) -> Vec<&str> {
    m.graph().nodes().iter().map(|n| n.name.as_str()).collect()
}

/// Seed 000's CNN as a Sequential, with automatic (Keras) names; `head` is the
/// last Dense.
fn seed_cnn(head: Option<(&str, Dense)>) -> Model {
    let s = Sequential::new("seed_cnn", [1, 28, 28])
        .add(Conv2d::new(32, 3).activation(Activation::Relu))
        .unwrap()
        .add(Pool2d::max(2))
        .unwrap()
        .add(Conv2d::new(64, 3).activation(Activation::Relu))
        .unwrap()
        .add(Pool2d::max(2))
        .unwrap()
        .add(Flatten)
        .unwrap();
    match head {
        Some((name, d)) => s.add_as(name, d).unwrap(),
        None => s
            .add(Dense::new(10).activation(Activation::SOFTMAX))
            .unwrap(),
    }
    .build()
    .unwrap()
}

/// Seed 000 example 1: `Model(model.input, model.layers[0].output)`, a Lambda
/// `K.mean(x, axis=(1, 2))` on it, and the whole network (whose Dense follows a
/// Flatten, so its kernel rows were permuted from Keras' (h, w, c) to (c, h, w)).
#[test]
fn seed_000_ex1_intermediate_model_spatial_mean_and_softmax() {
    let fx = Fx::load("s000_e1_seed_cnn.safetensors");
    let model = seed_cnn(None);
    assert_eq!(
        node_names(&model),
        [
            "input",
            "conv2d",
            "max_pooling2d",
            "conv2d_1",
            "max_pooling2d_1",
            "flatten",
            "dense"
        ],
        "layerlens names nodes as Keras does"
    );
    fx.set_params(model.params());
    let x = fx.get("input");

    let intermediate_model = model.submodel(&["conv2d"]).unwrap();
    let conv = intermediate_model.predict(x).unwrap();
    assert_close(&conv, fx.get("out/conv2d"), TOL, "000e1 conv2d");

    let mut g = Functional::extend(&model);
    let c = g.get("conv2d").unwrap();
    let mean = g.lambda(Reduce::mean([2, 3]), &[c], &[]).unwrap();
    assert_eq!(g.name(mean), "lambda");
    let final_model = g.build(&[mean]).unwrap();
    let y = final_model.predict(x).unwrap();
    assert_eq!(y.dims(), &[2, 32], "one mean per filter");
    assert_close(&y, fx.get("out/lambda"), TOL, "000e1 lambda (spatial mean)");

    assert_close(
        &model.predict(x).unwrap(),
        fx.get("out/dense"),
        TOL,
        "000e1 dense (softmax, after Flatten)",
    );
}

/// Seed 000 example 2: concatenating conv2d (N, 32, 30, 30) with conv2d_1
/// (N, 64, 13, 13) on channels cannot work; then the two intended versions.
#[test]
fn seed_000_ex2_concat_error_then_pooled_and_flattened_merges() {
    let fx = Fx::load("s000_e2_merge.safetensors");
    let mut g = Functional::new("seed_000_ex2");
    let x = g.input("input", [3, 32, 32]).unwrap();
    let c1 = g
        .add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let p1 = g.add(Pool2d::max(2), &[c1]).unwrap();
    let c2 = g
        .add(Conv2d::new(64, 3).activation(Activation::Relu), &[p1])
        .unwrap();
    assert_eq!((g.name(c1), g.name(c2)), ("conv2d", "conv2d_1"));

    // As written: layers.concatenate([conv1_output, conv2_output]).
    let e = g.add(Concat::default(), &[c1, c2]).unwrap_err().to_string();
    eprintln!("000e2 error: {e}");
    for part in [
        "concatenate",
        "'conv2d' (N, 32, 30, 30)",
        "'conv2d_1' (N, 64, 13, 13)",
    ] {
        assert!(e.contains(part), "error should mention {part}: {e}");
    }

    // Intended (a): global-average-pool both, concatenate, Lambda(Reshape((1, -1))).
    let a = g.add(GlobalAvgPool::default(), &[c1]).unwrap();
    let b = g.add(GlobalAvgPool::default(), &[c2]).unwrap();
    let m = g.add(Concat::default(), &[a, b]).unwrap();
    let gap = g.lambda(Reshape::new([1, -1]), &[m], &[]).unwrap();
    // Intended (b): flatten both (NCHW order; the Keras reference permuted its maps
    // to channels-first before flattening, so the orders agree), concatenate, reshape.
    let a = g.add(Flatten, &[c1]).unwrap();
    let b = g.add(Flatten, &[c2]).unwrap();
    let m = g.add(Concat::default(), &[a, b]).unwrap();
    let flat = g.lambda(Reshape::new([1, -1]), &[m], &[]).unwrap();
    assert_eq!((g.name(gap), g.name(flat)), ("lambda", "lambda_1"));
    assert_eq!(g.shape(gap).dims(), &[1, 96]);
    assert_eq!(g.shape(flat).dims(), &[1, 32 * 30 * 30 + 64 * 13 * 13]);
    let model = g.build(&[gap, flat]).unwrap();
    fx.set_params(model.params());
    let ys = model.forward(&[fx.get("input").clone()]).unwrap();
    assert_close(&ys[0], fx.get("out/gap"), TOL, "000e2 gap+concat+reshape");
    assert_close(
        &ys[1],
        fx.get("out/flatten"),
        TOL,
        "000e2 flatten+concat+reshape",
    );
}

/// Seed 000 example 3: `K.l2_normalize(x, axis=-1)` on the first conv's output;
/// where every channel is 0 the result is 0, not NaN.
#[test]
fn seed_000_ex3_l2_normalised_feature_maps() {
    let fx = Fx::load("s000_e3_l2.safetensors");
    let model = Sequential::new("seed_000_ex3", [3, 64, 64])
        .add(Conv2d::new(32, 3).activation(Activation::Relu))
        .unwrap()
        .add(Pool2d::max(2))
        .unwrap()
        .build()
        .unwrap();
    let mut g = Functional::extend(&model);
    let c = g.get("conv2d").unwrap();
    let n = g.lambda(L2Normalize::new(1), &[c], &[]).unwrap();
    let final_model = g.build(&[n]).unwrap();
    fx.set_params(final_model.params());
    let y = final_model.predict(fx.get("input")).unwrap();
    // assert_close also rejects NaN.
    assert_close(&y, fx.get("out/lambda"), TOL, "000e3 l2_normalize");
    // The fixture's zero input patch with bias -0.05: all-zero channel vectors.
    let zero_positions: f32 = y
        .abs()
        .unwrap()
        .sum(1)
        .unwrap()
        .eq(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        zero_positions >= 100.0,
        "expected all-zero positions, got {zero_positions}"
    );
    // Non-zero positions have unit norm.
    let norms: Vec<f32> = y
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(norms.iter().all(|&v| v == 0.0 || (v - 1.0).abs() < 1e-5));

    // The op on its own: zeros stay zeros, [3, 4, 0] becomes [0.6, 0.8, 0].
    let mut g = Functional::new("l2");
    let i = g.input("input", [3, 1, 2]).unwrap();
    let o = g.lambda(L2Normalize::new(1), &[i], &[]).unwrap();
    let m = g.build(&[o]).unwrap();
    let x = Tensor::new(&[[[[3f32, 0.0]], [[4.0, 0.0]], [[0.0, 0.0]]]], &Device::Cpu).unwrap();
    let want = Tensor::new(
        &[[[[0.6f32, 0.0]], [[0.8, 0.0]], [[0.0, 0.0]]]],
        &Device::Cpu,
    )
    .unwrap();
    assert_close(&m.predict(&x).unwrap(), &want, TOL, "l2_normalize by hand");
}

/// Seed 001's functional CNN (automatic names: conv2d, max_pooling2d, conv2d_1,
/// flatten, dense).
fn seed_001_model() -> Model {
    let mut g = Functional::new("seed_001");
    let input_layer = g.input("input", [1, 28, 28]).unwrap();
    let conv1 = g
        .add(
            Conv2d::new(32, 3).activation(Activation::Relu),
            &[input_layer],
        )
        .unwrap();
    let pool1 = g.add(Pool2d::max(2), &[conv1]).unwrap();
    let conv2 = g
        .add(Conv2d::new(64, 3).activation(Activation::Relu), &[pool1])
        .unwrap();
    let flatten = g.add(Flatten, &[conv2]).unwrap();
    let dense = g
        .add(Dense::new(10).activation(Activation::SOFTMAX), &[flatten])
        .unwrap();
    g.build(&[dense]).unwrap()
}

/// Seed 001 examples 1 and 3: sub-models with outputs conv2 and [conv1, conv2].
#[test]
fn seed_001_ex1_ex3_submodels_one_and_two_outputs() {
    let fx = Fx::load("s001_functional.safetensors");
    let model = seed_001_model();
    fx.set_params(model.params());
    let x = fx.get("input");

    let intermediate_layer_model = model.submodel(&["conv2d_1"]).unwrap();
    assert_close(
        &intermediate_layer_model.predict(x).unwrap(),
        fx.get("out/conv2d_1"),
        TOL,
        "001e1 conv2",
    );

    let intermediate_model = model.submodel(&["conv2d", "conv2d_1"]).unwrap();
    let activations = intermediate_model.forward(&[x.clone()]).unwrap();
    assert_eq!(activations.len(), 2);
    assert_eq!(activations[0].dims(), &[1, 32, 26, 26]);
    assert_eq!(activations[1].dims(), &[1, 64, 11, 11]);
    assert_close(
        &activations[0],
        fx.get("out/conv2d"),
        TOL,
        "001e3 [conv1, conv2][0]",
    );
    assert_close(
        &activations[1],
        fx.get("out/conv2d_1"),
        TOL,
        "001e3 [conv1, conv2][1]",
    );
}

/// Seed 001 example 2: `model.layers[2](raw_image)` applies a conv expecting 32
/// channels to a 1-channel image. The layerlens equivalents fail at build time
/// naming the node and both channel counts; the intended "layer returning an
/// intermediate output" is the sub-model inlined with `call_model`.
#[test]
fn seed_001_ex2_layer_getter_errors_and_wrapped_submodel() {
    let fx = Fx::load("s001_functional.safetensors");
    let model = seed_001_model();

    // Re-applying conv2d_1 (model.layers[2]) to the raw input.
    let mut g = Functional::extend(&model);
    let input = g.get("input").unwrap();
    let e = g.reuse("conv2d_1", &[input]).unwrap_err().to_string();
    eprintln!("001e2 reuse error: {e}");
    assert_eq!(
        e,
        "conv2d_1@1: this conv2d's kernel expects 32 input channels, but input 'input' has 1 channels (shape (N, 1, 28, 28))"
    );

    // The same with a shared layer whose first call fixed in_channels = 32.
    let mut g = Functional::new("shared");
    let x = g.input("input", [1, 28, 28]).unwrap();
    let c1 = g
        .add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let p1 = g.add(Pool2d::max(2), &[c1]).unwrap();
    let conv = g
        .shared(
            "shared_conv",
            Conv2d::new(64, 3).activation(Activation::Relu),
        )
        .unwrap();
    g.call(conv, &[p1]).unwrap();
    let e = g.call(conv, &[x]).unwrap_err().to_string();
    eprintln!("001e2 shared error: {e}");
    assert_eq!(
        e,
        "shared_conv@1: this conv2d's kernel expects 32 input channels, but input 'input' has 1 channels (shape (N, 1, 28, 28))"
    );

    // Wrapping the sub-network on a node of the wrong shape.
    let getter = model.submodel(&["conv2d_1"]).unwrap();
    let e = g
        .call_model("intermediate_layer_getter", &getter, &[p1])
        .unwrap_err()
        .to_string();
    eprintln!("001e2 call_model error: {e}");
    for part in [
        "intermediate_layer_getter",
        "expects (N, 1, 28, 28)",
        "'max_pooling2d' is (N, 32, 13, 13)",
    ] {
        assert!(e.contains(part), "error should mention {part}: {e}");
    }

    // Intended: a layer that returns conv2d_1's output for an image.
    let mut outer = Functional::new("outer");
    let image = outer.input("input", [1, 28, 28]).unwrap();
    let outs = outer
        .call_model("intermediate_layer_getter", &getter, &[image])
        .unwrap();
    let wrapped = outer.build(&outs).unwrap();
    // Weights are shared with `model`: loading Keras' weights into it after
    // wrapping is seen by the wrapper.
    fx.set_params(model.params());
    let x = fx.get("input");
    assert_close(
        &wrapped.predict(x).unwrap(),
        fx.get("out/conv2d_1"),
        TOL,
        "001e2 wrapped conv2d_1",
    );
    let acts = wrapped
        .extract(x, &["intermediate_layer_getter.conv2d"])
        .unwrap();
    assert_close(
        acts.get("intermediate_layer_getter.conv2d").unwrap(),
        fx.get("out/conv2d"),
        TOL,
        "001e2 wrapped conv2d",
    );
}

/// Seed 003 example 1: Dense(10, relu) then a Lambda scaling by `kernel[0, 0]`.
/// Keras reads the variable eagerly (frozen); a live reference follows changes.
#[test]
fn seed_003_ex1_scale_by_kernel_element_frozen_and_live() {
    let fx = Fx::load("s003_e1_scale.safetensors");
    let mut g = Functional::new("seed_003_ex1");
    let x = g.input("input", [20]).unwrap();
    let d = g
        .add(Dense::new(10).activation(Activation::Relu), &[x])
        .unwrap();
    // The frozen snapshot is taken when the Lambda is added, as Keras evaluates
    // `dense_layer.kernel` when the model is defined: load the weights first.
    fx.set_params(g.params());
    let frozen = g
        .lambda(
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::frozen("dense.weight")],
        )
        .unwrap();
    let live = g
        .lambda(
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::live("dense.weight")],
        )
        .unwrap();
    let model = g.build(&[frozen, live]).unwrap();
    let xs = [fx.get("input").clone()];
    let y = model.forward(&xs).unwrap();
    assert_close(&y[0], fx.get("out/frozen"), TOL, "003e1 frozen");
    assert_close(&y[1], fx.get("out/live"), TOL, "003e1 live");

    // Training (here: an assignment) changes the kernel, including [0, 0].
    model
        .params()
        .set("dense.weight", fx.get("param_after/dense.weight"))
        .unwrap();
    let y = model.forward(&xs).unwrap();
    assert_close(&y[0], fx.get("out_after/frozen"), TOL, "003e1 frozen after");
    assert_close(&y[1], fx.get("out_after/live"), TOL, "003e1 live after");
    let apart = (&y[0] - &y[1])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(apart > 0.1, "frozen and live must now differ ({apart})");
}

/// Seed 003 example 2 as written applies a 3x3x3x32 kernel to the 32-channel
/// conv output: the error names the kernel and both channel counts.
#[test]
fn seed_003_ex2_kernel_on_wrong_channels_fails_at_build_time() {
    let mut g = Functional::new("seed_003_ex2");
    let x = g.input("input", [3, 64, 64]).unwrap();
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
    eprintln!("003e2 error: {e}");
    assert_eq!(
        e,
        "lambda: kernel 'conv2d.weight' [32, 3, 3, 3] expects 3 input channels (groups 1), but input 'conv2d' has 32 channels (shape (N, 32, 64, 64))"
    );
}

/// Seed 003 example 2 as intended: a Lambda convolving a conv's output with that
/// conv's own kernel; output, MSE loss and the loss gradients w.r.t. the kernel
/// and bias against GradientTape, live (gradient through both uses) and frozen
/// (Keras: `tf.stop_gradient(kernel)` in the Lambda).
#[test]
fn seed_003_ex2_own_kernel_lambda_gradients_live_and_frozen() {
    let fx = Fx::load("s003_e2_conv_ref.safetensors");
    let x = fx.get("input");
    let target = fx.get("target");
    for (tag, weight) in [
        ("live", WeightRef::live("conv2d.weight")),
        ("frozen", WeightRef::frozen("conv2d.weight")),
    ] {
        let mut g = Functional::new("seed_003_ex2");
        let i = g.input("input", [3, 16, 16]).unwrap();
        let c = g
            .add(
                Conv2d::new(3, 3)
                    .padding(Padding::Same)
                    .activation(Activation::Relu),
                &[i],
            )
            .unwrap();
        fx.set_params(g.params()); // before the frozen snapshot is taken
        let l = g
            .lambda(Conv2dRef::new(Padding::Same), &[c], &[weight])
            .unwrap();
        assert_eq!(g.name(l), "lambda");
        let model = g.build(&[l]).unwrap();

        let acts = model
            .run(&[x.clone()], &["lambda"], RunOptions::training())
            .unwrap();
        let y = acts.get("lambda").unwrap();
        assert_close(
            y,
            fx.get(&format!("out/{tag}")),
            TOL,
            &format!("003e2 {tag} output"),
        );
        let loss = (y - target).unwrap().sqr().unwrap().mean_all().unwrap();
        assert_close(
            &loss.reshape(1).unwrap(),
            fx.get(&format!("loss/{tag}")),
            TOL,
            &format!("003e2 {tag} loss"),
        );
        let grads = model.params().grads(&loss.backward().unwrap());
        for key in ["conv2d.weight", "conv2d.bias"] {
            let got = grads
                .get(key)
                .unwrap_or_else(|| panic!("{tag}: no gradient for {key}"));
            assert_close(
                got,
                fx.get(&format!("grad/{tag}/{key}")),
                TOL,
                &format!("003e2 {tag} d loss / d {key}"),
            );
        }
        if tag == "frozen" {
            assert!(
                grads.keys().all(|k| !k.contains("frozen")),
                "a frozen snapshot is a constant: {:?}",
                grads.keys().collect::<Vec<_>>()
            );
        }
    }
}

/// Seed 003 example 3: the window computed from rounded kernel sums is (0, 0)
/// for Keras' seed 0 (TensorFlow fails at run time: "ksize must be a positive
/// int32 value"); layerlens refuses it when the layer is added. Valid windows
/// match AveragePooling2D / tf.nn.avg_pool.
#[test]
fn seed_003_ex3_zero_pool_size_error_and_valid_avg_pools() {
    let fx = Fx::load("s003_e3_pool.safetensors");
    let size: Vec<f32> = fx.get("seed_pool_size").to_vec1().unwrap();
    assert_eq!(size, [0.0, 0.0], "the fixture's seed gives a zero window");
    let (height, width) = (size[0] as usize, size[1] as usize);

    let mut g = Functional::new("seed_003_ex3");
    let x = g.input("input", [3, 8, 8]).unwrap();
    let e = g
        .add(Pool2d::new(PoolKind::Avg, [height, width]), &[x])
        .unwrap_err()
        .to_string();
    eprintln!("003e3 error: {e}");
    assert_eq!(
        e,
        "average_pooling2d: pool size must be at least 1 in each dimension, got 0x0"
    );
    let e = g
        .add_as("adaptive", Pool2d::new(PoolKind::Avg, [0, 2]), &[x])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "adaptive: pool size must be at least 1 in each dimension, got 0x2"
    );
    let e = g.add(Pool2d::avg(9), &[x]).unwrap_err().to_string();
    eprintln!("003e3 too-large error: {e}");
    assert!(e.starts_with("average_pooling2d"), "{e}");

    let p22 = g.add(Pool2d::avg(2), &[x]).unwrap();
    let p32 = g.add(Pool2d::new(PoolKind::Avg, [3, 2]), &[x]).unwrap();
    assert_eq!(g.shape(p32).dims(), &[3, 2, 4]);
    let model = g.build(&[p22, p32]).unwrap();
    let ys = model.forward(&[fx.get("input").clone()]).unwrap();
    assert_close(&ys[0], fx.get("out/pool_2x2"), TOL, "003e3 avg pool 2x2");
    assert_close(&ys[1], fx.get("out/pool_3x2"), TOL, "003e3 avg pool 3x2");
}

/// Seed 004 example 2's subclassed model as a Block: its children are scoped
/// `my_cnn.conv1`, ... and the stored `layer1_output` / `layer2_output` are
/// simply the taps `my_cnn.pool1` / `my_cnn.pool2`.
struct MyCnn;

impl Block for MyCnn {
    fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
        let x = g.add_as(
            "conv1",
            Conv2d::new(32, 3).activation(Activation::Relu),
            &[x[0]],
        )?;
        let x = g.add_as("pool1", Pool2d::max(2), &[x])?;
        let x = g.add_as(
            "conv2",
            Conv2d::new(64, 3).activation(Activation::Relu),
            &[x],
        )?;
        let x = g.add_as("pool2", Pool2d::max(2), &[x])?;
        let x = g.add_as("flatten", Flatten, &[x])?;
        g.add_as(
            "dense",
            Dense::new(10).activation(Activation::SOFTMAX),
            &[x],
        )
    }
}

#[test]
fn seed_004_ex2_subclassed_model_as_block_with_taps() {
    let fx = Fx::load("s004_e2_subclassed.safetensors");
    let mut g = Functional::new("seed_004");
    let x = g.input("input", [1, 28, 28]).unwrap();
    let y = g.block("my_cnn", &MyCnn, &[x]).unwrap();
    let model = g.build(&[y]).unwrap();
    assert_eq!(
        node_names(&model),
        [
            "input",
            "my_cnn.conv1",
            "my_cnn.pool1",
            "my_cnn.conv2",
            "my_cnn.pool2",
            "my_cnn.flatten",
            "my_cnn.dense"
        ]
    );
    fx.set_params(model.params());
    let acts = model
        .extract(fx.get("input"), &["my_cnn.pool1", "my_cnn.pool2", "my_cnn"])
        .unwrap();
    for name in ["my_cnn.pool1", "my_cnn.pool2", "my_cnn"] {
        assert_close(
            acts.get(name).unwrap(),
            fx.get(&format!("out/{name}")),
            TOL,
            &format!("004e2 {name}"),
        );
    }
}

/// Grad-CAM's inputs on the seed CNN with a linear head: d logit_k / d conv2d_1
/// (post-ReLU activation) and d logit_k / d input, against GradientTape with a
/// watched input and a sub-model returning [conv2d_1, logits].
#[test]
fn seed_cnn_gradcam_gradients_match_gradient_tape() {
    let fx = Fx::load("s000_e1_seed_cnn.safetensors");
    let model = seed_cnn(Some(("dense_logits", Dense::new(10))));
    fx.set_params_renamed(model.params(), &[("dense", "dense_logits")]);
    let k = fx.get("grad/class").to_vec1::<f32>().unwrap()[0] as usize;
    let x = fx.get("input");
    let g = model
        .gradients(
            &[x.clone()],
            &["dense_logits"],
            &["conv2d_1", "input"],
            Mode::Eval,
            |a| Ok(a.get("dense_logits")?.narrow(1, k, 1)?.sum_all()?),
        )
        .unwrap();
    assert_close(
        g.values.get("dense_logits").unwrap(),
        fx.get("out/dense_logits"),
        TOL,
        "gradcam logits",
    );
    let gc = g.grads.get("conv2d_1").unwrap();
    let nonzero: f32 = gc
        .ne(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(nonzero > 100.0, "a real gradient ({nonzero} non-zeros)");
    assert_close(
        gc,
        fx.get("grad/conv2d_1"),
        TOL,
        "gradcam d logit / d conv2d_1",
    );
    assert_close(
        g.grads.get("input").unwrap(),
        fx.get("grad/input"),
        TOL,
        "gradcam d logit / d input",
    );
}
