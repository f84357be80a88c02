//! Every seed example about building and tapping, as it was meant to work,
//! against real Keras (fixtures/keras_seeds/gen_keras_seeds.py), and the errors
//! the broken snippets run into. Tolerance `common::F32` (atol 1e-5, rtol 1e-4).

mod common;

use common::{assert_close, fixture, F32};
use layerlens_core::prelude::*;
use std::collections::HashMap;

struct Seed {
    fx: HashMap<String, Tensor>,
}

impl Seed {
    fn load() -> Self {
        Seed {
            fx: fixture("keras_seeds/keras_seeds.safetensors"),
        }
    }
    fn get(&self, k: &str) -> &Tensor {
        self.fx
            .get(k)
            .unwrap_or_else(|| panic!("fixture has no '{k}'"))
    }
    /// Loads every `<ex>/param/<key>` into `m`.
    fn params(&self, ex: &str, m: &Model) {
        let prefix = format!("{ex}/param/");
        let mut n = 0;
        for (k, t) in self.fx.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            m.params().set(&k[prefix.len()..], t).unwrap();
            n += 1;
        }
        assert!(n > 0, "no parameters for {ex}");
    }
}

#[test]
fn seed_000_example_1_intermediate_model_and_spatial_mean_lambda() {
    let s = Seed::load();
    let model = layerlens_core::zoo::seed_cnn(true).unwrap();
    s.params("s000e1", &model);
    let x = s.get("s000e1/input");
    let acts = model.extract(x, &["conv2d"]).unwrap();
    assert_close(
        acts.get("conv2d").unwrap(),
        s.get("s000e1/out/conv2d"),
        F32,
        "conv2d",
    );
    // final_model = Model(model.input, Lambda(mean)(model.layers[0].output))
    let mut g = Functional::extend(&model);
    let conv = g.get("conv2d").unwrap();
    let mean = g.lambda(Reduce::mean([2, 3]), &[conv], &[]).unwrap();
    let final_model = g.build(&[mean]).unwrap();
    assert_close(
        &final_model.predict(x).unwrap(),
        s.get("s000e1/out/mean"),
        F32,
        "spatial mean",
    );
    // The whole network, through Keras' NHWC Flatten order converted for the Dense layer.
    assert_close(
        &model.predict(x).unwrap(),
        s.get("s000e1/out/dense"),
        F32,
        "softmax output",
    );
}

#[test]
fn seed_000_example_2_concatenation_fails_clearly_then_works_as_intended() {
    let s = Seed::load();
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 32, 32]).unwrap();
    let c1 = g
        .add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let p1 = g.add(Pool2d::max(2), &[c1]).unwrap();
    let c2 = g
        .add(Conv2d::new(64, 3).activation(Activation::Relu), &[p1])
        .unwrap();
    // As written: channels of a 30x30 and a 13x13 map.
    let e = g.add(Concat::default(), &[c1, c2]).unwrap_err().to_string();
    assert!(
        e.contains("'conv2d' (N, 32, 30, 30) and 'conv2d_1' (N, 64, 13, 13)"),
        "{e}"
    );
    // As intended: pool both to one vector each, merge, reshape to (1, -1).
    let g1 = g.add_as("gap1", GlobalAvgPool::default(), &[c1]).unwrap();
    let g2 = g.add_as("gap2", GlobalAvgPool::default(), &[c2]).unwrap();
    let m = g.add(Concat::default(), &[g1, g2]).unwrap();
    let r = g
        .lambda_as("reshape", Reshape::new([1, -1]), &[m], &[])
        .unwrap();
    let model = g.build(&[r]).unwrap();
    s.params("s000e2", &model);
    assert_close(
        &model.predict(s.get("s000e2/input")).unwrap(),
        s.get("s000e2/out/reshape"),
        F32,
        "merged",
    );
}

#[test]
fn seed_000_example_3_l2_normalised_feature_maps() {
    let s = Seed::load();
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 64, 64]).unwrap();
    let c = g
        .add(Conv2d::new(32, 3).activation(Activation::Relu), &[x])
        .unwrap();
    let n = g.lambda_as("l2", L2Normalize::new(1), &[c], &[]).unwrap();
    let model = g.build(&[n]).unwrap();
    s.params("s000e3", &model);
    let got = model.predict(s.get("s000e3/input")).unwrap();
    // The input is shifted so that some positions have no positive channel at all:
    // those must come out as zeros, as in Keras, not NaN.
    let zeros = got
        .sum_keepdim(1)
        .unwrap()
        .eq(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(
        zeros.to_scalar::<f32>().unwrap() > 0.0,
        "the fixture exercises all-zero positions"
    );
    assert_close(&got, s.get("s000e3/out/l2"), F32, "l2_normalize");
}

fn seed_001_model() -> Model {
    let mut g = Functional::new("m");
    let x = g.input("input", [1, 28, 28]).unwrap();
    let c1 = g
        .add_as(
            "conv1",
            Conv2d::new(32, 3).activation(Activation::Relu),
            &[x],
        )
        .unwrap();
    let p1 = g.add_as("pool1", Pool2d::max(2), &[c1]).unwrap();
    let c2 = g
        .add_as(
            "conv2",
            Conv2d::new(64, 3).activation(Activation::Relu),
            &[p1],
        )
        .unwrap();
    let f = g.add_as("flatten", Flatten, &[c2]).unwrap();
    let d = g
        .add_as(
            "dense",
            Dense::new(10).activation(Activation::SOFTMAX),
            &[f],
        )
        .unwrap();
    g.build(&[d]).unwrap()
}

#[test]
fn seed_001_examples_1_and_3_sub_models_with_one_and_two_outputs() {
    let s = Seed::load();
    let model = seed_001_model();
    s.params("s001", &model);
    let x = s.get("s001/input");
    let one = model.submodel(&["conv2"]).unwrap();
    assert_close(
        &one.predict(x).unwrap(),
        s.get("s001/out/conv2"),
        F32,
        "conv2",
    );
    let two = model
        .submodel(&["conv1", "conv2"])
        .unwrap()
        .forward(std::slice::from_ref(x))
        .unwrap();
    assert_close(&two[0], s.get("s001/out/conv1"), F32, "conv1");
    assert_close(&two[1], s.get("s001/out/conv2"), F32, "conv2 of two");
    assert_close(
        &model.predict(x).unwrap(),
        s.get("s001/out/dense"),
        F32,
        "dense",
    );
}

#[test]
fn seed_001_example_2_a_layer_wrapping_a_sub_network() {
    let s = Seed::load();
    let model = seed_001_model();
    s.params("s001", &model);
    // As written, model.layers[2] (conv2, 32 input channels) is called on the raw
    // 1-channel image: the error names the node and both channel counts.
    let mut g = Functional::extend(&model);
    let input = g.get("input").unwrap();
    let e = g.reuse("conv2", &[input]).unwrap_err().to_string();
    assert_eq!(e, "conv2@1: this conv2d's kernel expects 32 input channels, but input 'input' has 1 channels (shape (N, 1, 28, 28))");
    // As intended: a layer that wraps the network up to conv2 and returns its output.
    let getter = model.submodel(&["conv2"]).unwrap();
    let mut outer = Functional::new("outer");
    let x = outer.input("image", [1, 28, 28]).unwrap();
    let out = outer
        .call_model("intermediate_layer_getter", &getter, &[x])
        .unwrap();
    let wrapped = outer.build(&out).unwrap();
    assert_close(
        &wrapped.predict(s.get("s001/input")).unwrap(),
        s.get("s001/out/conv2"),
        F32,
        "wrapped conv2",
    );
}

#[test]
fn seed_003_example_1_scaling_by_a_frozen_kernel_element() {
    let s = Seed::load();
    let mut g = Functional::new("m");
    let x = g.input("input", [20]).unwrap();
    let d = g
        .add(Dense::new(10).activation(Activation::Relu), &[x])
        .unwrap();
    // Keras reads `dense.kernel` eagerly when the Lambda is built: a frozen snapshot.
    // The snapshot is taken at build time, so the Keras weights are loaded first.
    let probe = g.build(&[d]).unwrap();
    s.params("s003e1", &probe);
    let mut g = Functional::extend(&probe);
    let d = g.get("dense").unwrap();
    let scaled = g
        .lambda_as(
            "scale",
            ScaleByWeight { index: vec![0, 0] },
            &[d],
            &[WeightRef::frozen("dense.weight")],
        )
        .unwrap();
    let model = g.build(&[scaled]).unwrap();
    assert_close(
        &model.predict(s.get("s003e1/input")).unwrap(),
        s.get("s003e1/out/scale"),
        F32,
        "scaled",
    );
}

#[test]
fn seed_003_example_2_live_kernel_reference_gradients_match_keras() {
    let s = Seed::load();
    let x = s.get("s003e2/input");
    let target = s.get("s003e2/target");
    for (tag, weight) in [
        ("live", WeightRef::live("conv2d.weight")),
        ("frozen", WeightRef::frozen("conv2d.weight")),
    ] {
        let mut g = Functional::new("m");
        let i = g.input("input", [3, 16, 16]).unwrap();
        let c = g
            .add(
                Conv2d::new(3, 3)
                    .padding(Padding::Same)
                    .activation(Activation::Relu),
                &[i],
            )
            .unwrap();
        let probe = g.build(&[c]).unwrap();
        s.params("s003e2", &probe);
        let mut g = Functional::extend(&probe);
        let c = g.get("conv2d").unwrap();
        let l = g
            .lambda(Conv2dRef::new(Padding::Same), &[c], &[weight])
            .unwrap();
        let model = g.build(&[l]).unwrap();
        let acts = model
            .run(&[x.clone()], &["lambda"], RunOptions::training())
            .unwrap();
        let y = acts.get("lambda").unwrap();
        assert_close(y, s.get(&format!("s003e2/out/{tag}")), F32, tag);
        let loss = (y - target).unwrap().sqr().unwrap().mean_all().unwrap();
        let want_loss = s
            .get(&format!("s003e2/loss/{tag}"))
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (loss.to_scalar::<f32>().unwrap() - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0)
        );
        let grads = model.params().grads(&loss.backward().unwrap());
        for key in ["conv2d.weight", "conv2d.bias"] {
            assert_close(
                &grads[key],
                s.get(&format!("s003e2/grad/{tag}/{key}")),
                F32,
                &format!("{tag} d loss / d {key}"),
            );
        }
    }
}

#[test]
fn seed_003_example_3_pooling_windows() {
    let s = Seed::load();
    let mut g = Functional::new("m");
    let x = g.input("input", [3, 8, 8]).unwrap();
    // The snippet computes its window from rounded weight sums, which can be 0.
    let e = g.add(Pool2d::avg(0), &[x]).unwrap_err().to_string();
    assert_eq!(
        e,
        "average_pooling2d: pool size must be at least 1 in each dimension, got 0x0"
    );
    let p = g.add_as("pool", Pool2d::avg(2), &[x]).unwrap();
    let model = g.build(&[p]).unwrap();
    assert_close(
        &model.predict(s.get("s003e3/input")).unwrap(),
        s.get("s003e3/out/pool"),
        F32,
        "avg pool",
    );
}

struct MyCnn;

impl Block for MyCnn {
    fn build(&self, g: &mut Functional, x: &[NodeRef]) -> Result<NodeRef> {
        let y = g.add_as(
            "conv1",
            Conv2d::new(32, 3).activation(Activation::Relu),
            &[x[0]],
        )?;
        let y = g.add_as("pool1", Pool2d::max(2), &[y])?;
        let y = g.add_as(
            "conv2",
            Conv2d::new(64, 3).activation(Activation::Relu),
            &[y],
        )?;
        let y = g.add_as("pool2", Pool2d::max(2), &[y])?;
        let y = g.add_as("flatten", Flatten, &[y])?;
        g.add_as(
            "dense",
            Dense::new(10).activation(Activation::SOFTMAX),
            &[y],
        )
    }
}

#[test]
fn seed_004_example_2_subclassed_model_outputs_are_taps() {
    let s = Seed::load();
    let mut g = Functional::new("m");
    let x = g.input("input", [1, 28, 28]).unwrap();
    let y = g.block("my_cnn", &MyCnn, &[x]).unwrap();
    let model = g.build(&[y]).unwrap();
    s.params("s004", &model);
    let acts = model
        .extract(
            s.get("s004/input"),
            &["my_cnn.pool1", "my_cnn.pool2", "my_cnn"],
        )
        .unwrap();
    assert_close(
        acts.get("my_cnn.pool1").unwrap(),
        s.get("s004/out/pool1"),
        F32,
        "layer1_output",
    );
    assert_close(
        acts.get("my_cnn.pool2").unwrap(),
        s.get("s004/out/pool2"),
        F32,
        "layer2_output",
    );
    assert_close(
        acts.get("my_cnn").unwrap(),
        s.get("s004/out/dense"),
        F32,
        "output",
    );
}
